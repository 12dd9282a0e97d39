//! The launch interface: cuLaunchKernel's shape (kernel name, grid, block, dynamic shared bytes, one pointer per
//! argument), implemented by the GPU device and by the CPU emulator ([`super::emu::EmuDevice`]), so launchers, tests
//! and benches are written once.
//!
//! `void**` carries no types, so every argument says what it is ([`KernelArg::code`]) and a launcher compares the
//! codes with the kernel's signature before launching: a wrong width, a missing argument or a swapped pointer and
//! scalar is an error instead of undefined behaviour. The typed launchers in [`super::kernels`] are generated from
//! the same C declarations, so they cannot disagree with the kernels in the first place.
use std::fmt;
use std::marker::PhantomData;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    pub fn new(grid: [u32; 3], block: [u32; 3]) -> Self {
        LaunchConfig {
            grid,
            block,
            shared_bytes: 0,
        }
    }

    /// A 1-D grid of 1-D blocks.
    pub fn linear(grid: u32, block: u32) -> Self {
        Self::new([grid, 1, 1], [block, 1, 1])
    }

    pub fn with_shared(mut self, bytes: u32) -> Self {
        self.shared_bytes = bytes;
        self
    }
}

/// What a kernel argument is, as the emulator registry spells it ("P", "i", "u", "f", "S12").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgCode {
    Ptr,
    I32,
    U32,
    F32,
    /// A parameter struct passed by value, of this many bytes.
    Struct(usize),
}

impl fmt::Display for ArgCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgCode::Ptr => f.write_str("P"),
            ArgCode::I32 => f.write_str("i"),
            ArgCode::U32 => f.write_str("u"),
            ArgCode::F32 => f.write_str("f"),
            ArgCode::Struct(n) => write!(f, "S{n}"),
        }
    }
}

/// Joins argument codes into a signature string ("P,P,P,S12").
pub fn signature(args: &[&dyn KernelArg]) -> String {
    args.iter().map(|a| a.code().to_string()).collect::<Vec<_>>().join(",")
}

/// A value that can be passed to a kernel: the launcher hands the kernel a pointer to its bytes.
///
/// # Safety
/// The value's bytes must be exactly what the kernel parameter of [`KernelArg::code`] expects: a device address
/// for `Ptr`, a 4-byte scalar, or a `#[repr(C)]` struct laid out like its C twin.
pub unsafe trait KernelArg {
    fn code(&self) -> ArgCode;
}

// SAFETY: 4-byte scalars, passed by value.
unsafe impl KernelArg for i32 {
    fn code(&self) -> ArgCode {
        ArgCode::I32
    }
}
unsafe impl KernelArg for u32 {
    fn code(&self) -> ArgCode {
        ArgCode::U32
    }
}
unsafe impl KernelArg for f32 {
    fn code(&self) -> ArgCode {
        ArgCode::F32
    }
}

/// Element types that device buffers hold.
///
/// # Safety
/// Plain old data: any bit pattern of the right size is a valid value (kernels write raw bits).
pub unsafe trait DeviceRepr: Copy + Send + Sync + 'static {
    const NAME: &'static str;
}
// SAFETY: all are plain old data.
unsafe impl DeviceRepr for f32 {
    const NAME: &'static str = "f32";
}
unsafe impl DeviceRepr for half::bf16 {
    const NAME: &'static str = "bf16";
}
unsafe impl DeviceRepr for i32 {
    const NAME: &'static str = "i32";
}
unsafe impl DeviceRepr for u32 {
    const NAME: &'static str = "u32";
}
unsafe impl DeviceRepr for u8 {
    const NAME: &'static str = "u8";
}

/// A read-only device pointer to `len` elements of `T`, borrowed from a device buffer for `'a`. In a kernel
/// argument list it is the 8-byte device address (`#[repr(C)]`, address first).
#[repr(C)]
pub struct DevPtr<'a, T> {
    addr: u64,
    len: usize,
    _p: PhantomData<&'a [T]>,
}

/// A writable device pointer (`T*` in the kernel), borrowed mutably from a device buffer.
#[repr(C)]
pub struct DevPtrMut<'a, T> {
    addr: u64,
    len: usize,
    _p: PhantomData<&'a mut [T]>,
}

impl<T> Clone for DevPtr<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevPtr<'_, T> {}

impl<T> fmt::Debug for DevPtr<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevPtr({:#x}, {} elements)", self.addr, self.len)
    }
}
impl<T> fmt::Debug for DevPtrMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevPtrMut({:#x}, {} elements)", self.addr, self.len)
    }
}

impl<'a, T> DevPtr<'a, T> {
    /// # Safety
    /// `addr` must be the device address of `len` live elements of `T` that stay valid (and are not written
    /// through another pointer during a launch that reads them) for `'a`.
    pub unsafe fn from_raw(addr: u64, len: usize) -> Self {
        DevPtr {
            addr,
            len,
            _p: PhantomData,
        }
    }
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The same memory viewed as `U` (element count rescaled, rounded down).
    ///
    /// # Safety
    /// The kernel receiving it must read `U`s there (used by dtype-generic launchers after checking the dtype).
    pub unsafe fn cast<U>(self) -> DevPtr<'a, U> {
        DevPtr::from_raw(self.addr, self.len * size_of::<T>() / size_of::<U>().max(1))
    }
}

impl<'a, T> DevPtrMut<'a, T> {
    /// # Safety
    /// As [`DevPtr::from_raw`], and no other pointer may access the memory during a launch that writes it.
    pub unsafe fn from_raw(addr: u64, len: usize) -> Self {
        DevPtrMut {
            addr,
            len,
            _p: PhantomData,
        }
    }
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// See [`DevPtr::cast`].
    ///
    /// # Safety
    /// As [`DevPtr::cast`].
    pub unsafe fn cast<U>(self) -> DevPtrMut<'a, U> {
        DevPtrMut::from_raw(self.addr, self.len * size_of::<T>() / size_of::<U>().max(1))
    }
}

// SAFETY: the first field is the 8-byte device address, which is what a `T*` kernel parameter holds.
unsafe impl<T> KernelArg for DevPtr<'_, T> {
    fn code(&self) -> ArgCode {
        ArgCode::Ptr
    }
}
unsafe impl<T> KernelArg for DevPtrMut<'_, T> {
    fn code(&self) -> ArgCode {
        ArgCode::Ptr
    }
}

/// Something that runs kernels by name: the GPU device, or the CPU emulator.
pub trait Launcher {
    /// Runs kernel `name` over `cfg` with `args` (one per kernel parameter, in order) and returns when it is done
    /// (the emulator) or queued (a GPU stream). Implementations check `args` against the kernel's signature.
    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> crate::Result<()>;
}

/// Activation dtypes, each with a kernel variant: the engine's one `Dtype`.
pub use crate::ops::Dtype;

/// An activation element type: `f32` or `bf16`.
pub trait Elem: DeviceRepr {
    const DTYPE: Dtype;
}
impl Elem for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
impl Elem for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

/// Errors for launch arguments that do not fit a kernel.
pub(crate) fn invalid(op: &str, msg: impl fmt::Display) -> crate::Error {
    crate::Error::Invalid(format!("kernel launch `{op}`: {msg}"))
}

/// `n` as a kernel's `int32_t`, or an error naming the op and the value.
pub(crate) fn to_i32(op: &str, what: &str, n: usize) -> crate::Result<i32> {
    i32::try_from(n).map_err(|_| invalid(op, format!("{what} = {n} does not fit in int32")))
}

/// Checks that a buffer holds at least `need` elements.
pub(crate) fn check_len(op: &str, what: &str, have: usize, need: usize) -> crate::Result<()> {
    if have < need {
        return Err(invalid(op, format!("{what} has {have} elements, needs {need}")));
    }
    Ok(())
}
