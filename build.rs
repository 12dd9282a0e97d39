//! Build script: the CUDA kernels in `kernels/`, two ways.
//!
//! 1. Always: the CPU emulator. g++ (through the `cc` crate) compiles every `kernels/*.cu` as C++17 with
//!    `kernels/emu/cuemu.h` force-included, plus the emulator runtime and its kernel registry, into a static library
//!    that `backend::cuda::emu` launches through `cuemu_launch` (x86-64 only; elsewhere the emulator is left out).
//! 2. When nvcc is found: PTX for compute_80 and cubins for sm_80 and sm_90 of every `kernels/*.cu`, embedded in the
//!    crate (`backend::cuda::kernels::MODULES`), with each kernel's ptxas resource use printed as a cargo warning.
//!    nvcc is looked up in `$NVCC` (authoritative when set: a missing file, `""` or `none` disables the GPU build),
//!    `$CUDA_HOME/bin/nvcc`, `.toolchain/cuda/nvidia/cu13/bin/nvcc` (installed by `scripts/setup.sh`), then `PATH`.
//!    Without nvcc, or when it fails, the crate still builds and a warning says why; the failure is also recorded in
//!    `kernels::NVCC`, which a test checks, so a kernel that nvcc rejects fails CI without breaking the build.
//!
//! It also parses `kernels/llamagen_kernels.h` (the one header for kernel parameter structs, the kernel table and
//! the emulator's launch API) and generates the Rust side: `#[repr(C)]` mirrors of the structs, one typed launcher
//! per kernel, and a C++ table of `sizeof`/`offsetof` values that a test compares with the Rust layouts.
use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const HEADER: &str = "kernels/llamagen_kernels.h";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo::rustc-check-cfg=cfg(llamagen_cuemu)");
    cpu_family_cfgs();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for v in ["NVCC", "CUDA_HOME", "CUDA_NVCC_FLAGS", "LLAMAGEN_NVCC_REQUIRED"] {
        println!("cargo:rerun-if-env-changed={v}");
    }

    let header = fs::read_to_string(root.join(HEADER)).unwrap_or_else(|e| panic!("{HEADER}: {e}"));
    let api = parse_header(&header);
    let cu_files = kernel_sources(&root);
    let modules = kernel_modules(&api, &cu_files);

    let emulator = env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if emulator {
        fs::write(out.join("llamagen_layouts.cpp"), c_layout_source(&api)).unwrap();
        build_emulator(&root, &out, &cu_files);
        println!("cargo:rustc-cfg=llamagen_cuemu");
    } else {
        println!("cargo:warning=CUDA emulator not built: it needs x86-64 Linux (fiber context switch)");
    }

    let mut nvcc = compile_with_nvcc(&root, &out, &cu_files);
    nvcc.sass = sass_mix(&root, &nvcc);
    // Tests of the cubins (SASS mix, module table) are reported ignored, with the reason, where nvcc was not found.
    println!("cargo::rustc-check-cfg=cfg(llamagen_nvcc)");
    if nvcc.path.is_some() {
        println!("cargo:rustc-cfg=llamagen_nvcc");
    }
    let rust = rust_source(&api, &modules, &nvcc, &out, emulator);
    fs::write(out.join("kernels_gen.rs"), rust).unwrap();
}

/// `llamagen_cpu_<family>` for every CPU kernel family the build host can run (`backend::cpu::family`), so a test
/// of a family the CPU lacks is reported as ignored, with the reason, rather than passed: CI builds and runs its
/// tests on one machine. Test executables carried to another machine check the family again when they start one.
fn cpu_family_cfgs() {
    let families = ["portable", "avx2", "avx512", "avx512bf16"];
    for f in families {
        println!("cargo::rustc-check-cfg=cfg(llamagen_cpu_{f})");
    }
    let x86 = env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    let mut has = [true, false, false, false];
    #[cfg(target_arch = "x86_64")]
    if x86 {
        let (avx2, avx512) = (
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"),
        );
        has = [
            true,
            avx2,
            avx2 && avx512,
            avx2 && avx512 && is_x86_feature_detected!("avx512bf16"),
        ];
    }
    let _ = x86;
    for (f, h) in families.iter().zip(has) {
        if h {
            println!("cargo:rustc-cfg=llamagen_cpu_{f}");
        }
    }
}

// ------------------------------------------------------------------------------------------------------------------
// The header
// ------------------------------------------------------------------------------------------------------------------

struct CStruct {
    name: String,
    fields: Vec<(String, String)>, // (C type, name)
}

enum ParamKind {
    Ptr { elem: String, mutable: bool },
    Scalar(String),
    Struct(String),
}

struct Param {
    name: String,
    kind: ParamKind,
}

struct Kernel {
    name: String,
    params: Vec<Param>,
    decl: String,
    selftest: bool,
}

struct Api {
    structs: Vec<CStruct>,
    kernels: Vec<Kernel>,
    /// `#define NAME <integer>` of the header: parameter values both sides name (`CONV_TC_*`).
    consts: Vec<(String, i64)>,
}

fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            let end = s[i + 2..].find("*/").map(|e| i + 2 + e + 2).unwrap_or(b.len());
            // Keep line structure (macro continuations end in `\` + newline).
            out.extend(s[i..end].chars().filter(|&c| c == '\n'));
            i = end;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn scalar_rust(c: &str) -> Option<&'static str> {
    Some(match c {
        "int32_t" => "i32",
        "uint32_t" => "u32",
        "float" => "f32",
        _ => return None,
    })
}

fn elem_rust(c: &str) -> Option<&'static str> {
    Some(match c {
        "__nv_bfloat16" => "half::bf16",
        c => scalar_rust(c)?,
    })
}

fn parse_header(src: &str) -> Api {
    let s = strip_comments(src);
    let mut structs = Vec::new();
    let mut rest = s.as_str();
    while let Some(p) = rest.find("typedef struct") {
        rest = &rest[p + "typedef struct".len()..];
        let open = rest.find('{').expect("typedef struct without `{`");
        let name = rest[..open].trim().to_string();
        let close = rest.find('}').expect("typedef struct without `}`");
        let body = &rest[open + 1..close];
        let after = &rest[close + 1..];
        let semi = after.find(';').expect("typedef struct without `;`");
        let alias = after[..semi].trim();
        assert_eq!(alias, name, "{HEADER}: write `typedef struct {name} {{ ... }} {name};`");
        let mut fields = Vec::new();
        for f in body.split(';').map(str::trim).filter(|f| !f.is_empty()) {
            let toks: Vec<&str> = f.split_whitespace().collect();
            assert!(
                toks.len() == 2 && scalar_rust(toks[0]).is_some() && !toks[1].contains('['),
                "{HEADER}: struct {name}: field `{f}` is not `<int32_t|uint32_t|float> name`"
            );
            fields.push((toks[0].to_string(), toks[1].to_string()));
        }
        structs.push(CStruct { name, fields });
        rest = &after[semi..];
    }

    let mut kernels = Vec::new();
    for (mac, selftest) in [("LLAMAGEN_KERNELS", false), ("LLAMAGEN_SELFTEST_KERNELS", true)] {
        let def = format!("#define {mac}(X)");
        let p = s.find(&def).unwrap_or_else(|| panic!("{HEADER}: `{def}` not found"));
        let mut body = String::new();
        for line in s[p + def.len()..].lines() {
            let t = line.trim_end();
            match t.strip_suffix('\\') {
                Some(cont) => body.push_str(cont),
                None => {
                    body.push_str(t);
                    break;
                }
            }
            body.push(' ');
        }
        let mut rest = body.as_str();
        while let Some(x) = rest.find("X(") {
            let inner = &rest[x + 2..];
            let end = matching_paren(inner);
            let entry = &inner[..end];
            rest = &inner[end + 1..];
            let comma = entry.find(',').expect("X(name, (params))");
            let name = entry[..comma].trim().to_string();
            let plist = entry[comma + 1..].trim();
            assert!(
                plist.starts_with('(') && plist.ends_with(')'),
                "{HEADER}: {name}: parameters not in (...)"
            );
            let plist = &plist[1..plist.len() - 1];
            let params = plist.split(',').map(|p| parse_param(&name, p, &structs)).collect();
            let decl = format!("{name}({})", plist.split_whitespace().collect::<Vec<_>>().join(" "));
            kernels.push(Kernel {
                name,
                params,
                decl,
                selftest,
            });
        }
    }
    assert!(!kernels.is_empty(), "{HEADER}: empty kernel table");
    let consts = s
        .lines()
        .filter_map(|l| {
            let mut t = l.strip_prefix("#define ")?.split_whitespace();
            let (name, value) = (t.next()?, t.next()?.parse::<i64>().ok()?);
            t.next().is_none().then(|| (name.to_string(), value))
        })
        .collect();
    Api {
        structs,
        kernels,
        consts,
    }
}

fn matching_paren(s: &str) -> usize {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return i,
            ')' => depth -= 1,
            _ => {}
        }
    }
    panic!("{HEADER}: unbalanced parentheses in the kernel table");
}

fn parse_param(kernel: &str, p: &str, structs: &[CStruct]) -> Param {
    let spaced = p.replace('*', " * ");
    let toks: Vec<&str> = spaced.split_whitespace().filter(|t| *t != "__restrict__").collect();
    let bad = || -> ! {
        panic!(
            "{HEADER}: kernel {kernel}: parameter `{}` is outside the supported syntax",
            p.trim()
        )
    };
    let (name, ty) = toks.split_last().unwrap_or_else(|| bad());
    let is_const = ty.contains(&"const");
    let stars = ty.iter().filter(|t| **t == "*").count();
    let base: Vec<&str> = ty.iter().copied().filter(|t| *t != "const" && *t != "*").collect();
    if base.len() != 1 || stars > 1 {
        bad();
    }
    let base = base[0].to_string();
    let kind = if stars == 1 {
        if elem_rust(&base).is_none() && !structs.iter().any(|s| s.name == base) {
            bad();
        }
        ParamKind::Ptr {
            elem: base,
            mutable: !is_const,
        }
    } else if scalar_rust(&base).is_some() {
        ParamKind::Scalar(base)
    } else if structs.iter().any(|s| s.name == base) {
        ParamKind::Struct(base)
    } else {
        bad()
    };
    Param {
        name: name.to_string(),
        kind,
    }
}

/// `kernels/*.cu`, sorted.
fn kernel_sources(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root.join("kernels"))
        .expect("kernels/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    v.sort();
    v
}

/// Kernel name -> the module (`.cu` stem) that defines it; every table entry must have exactly one definition.
fn kernel_modules(api: &Api, cu_files: &[PathBuf]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for f in cu_files {
        let src = strip_comments(&fs::read_to_string(f).unwrap());
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        for k in &api.kernels {
            if src.contains(&format!("void {}(", k.name)) {
                if let Some(prev) = m.insert(k.name.clone(), stem.clone()) {
                    panic!(
                        "kernel {} is defined in both kernels/{prev}.cu and kernels/{stem}.cu",
                        k.name
                    );
                }
            }
        }
    }
    for k in &api.kernels {
        assert!(
            m.contains_key(&k.name),
            "kernel {} is in {HEADER} but no kernels/*.cu defines it",
            k.name
        );
    }
    m
}

// ------------------------------------------------------------------------------------------------------------------
// The emulator
// ------------------------------------------------------------------------------------------------------------------

fn build_emulator(root: &Path, out: &Path, cu_files: &[PathBuf]) {
    let k = root.join("kernels");
    let mut b = cc::Build::new();
    b.cpp(true)
        .opt_level(2)
        .include(k.join("emu/stub"))
        .include(&k)
        .flag("-std=c++17")
        .flag("-march=x86-64-v3")
        .flag("-ffp-contract=fast") // nvcc contracts a*b+c into FMA by default
        .flag("-fno-strict-aliasing") // kernels reinterpret_cast for 16-byte vector accesses
        .flag("-ftls-model=initial-exec") // __shared__ is thread_local; the crate links into executables
        .flag("-Wno-unknown-pragmas") // #pragma unroll
        .flag("-x")
        .flag("c++")
        .flag("-include")
        .flag(k.join("emu/cuemu.h").to_str().unwrap());
    b.file(k.join("emu/runtime.cpp"));
    b.file(k.join("emu/registry.cpp"));
    b.file(k.join("emu/stats.cpp"));
    b.file(out.join("llamagen_layouts.cpp"));
    for f in cu_files {
        b.file(f);
    }
    b.compile("llamagen_cuemu");
}

fn c_layout_source(api: &Api) -> String {
    let mut s = String::from(
        "// Generated by build.rs from kernels/llamagen_kernels.h: sizeof/offsetof of every parameter struct, in the\n\
         // order of backend::cuda::kernels::RUST_LAYOUTS.\n#include <stddef.h>\n#include \"llamagen_kernels.h\"\n\
         extern \"C\" const unsigned long long llamagen_c_layouts[] = {\n",
    );
    for st in &api.structs {
        writeln!(s, "    sizeof({}),", st.name).unwrap();
        for (_, f) in &st.fields {
            writeln!(s, "    offsetof({}, {f}),", st.name).unwrap();
        }
    }
    s.push_str("};\n");
    s
}

// ------------------------------------------------------------------------------------------------------------------
// nvcc
// ------------------------------------------------------------------------------------------------------------------

struct Nvcc {
    path: Option<PathBuf>,
    version: String,
    /// Why there are no GPU images (nvcc missing or failed); None when all were built.
    error: Option<String>,
    /// module -> (ptx, sm_80 cubin, sm_90 cubin) paths
    images: BTreeMap<String, [PathBuf; 3]>,
    report: String,
    /// [`sass_mix`] of the images.
    sass: String,
}

fn find_nvcc(root: &Path) -> Result<PathBuf, String> {
    if let Some(v) = env::var_os("NVCC") {
        let s = v.to_string_lossy().to_string();
        if s.is_empty() || s == "none" {
            return Err(format!("NVCC={s:?} disables the GPU build"));
        }
        let p = PathBuf::from(&v);
        if p.is_file() {
            return Ok(p);
        }
        if !s.contains('/') {
            if let Some(p) = search_path(&s) {
                return Ok(p);
            }
        }
        return Err(format!("NVCC={s} does not exist"));
    }
    if let Some(h) = env::var_os("CUDA_HOME") {
        let p = PathBuf::from(h).join("bin/nvcc");
        if p.is_file() {
            return Ok(p);
        }
    }
    let local = root.join(".toolchain/cuda/nvidia/cu13/bin/nvcc");
    if local.is_file() {
        return Ok(local);
    }
    search_path("nvcc").ok_or_else(|| {
        "nvcc not found ($NVCC, $CUDA_HOME/bin, .toolchain/cuda/nvidia/cu13/bin, PATH); run scripts/setup.sh"
            .to_string()
    })
}

fn search_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn compile_with_nvcc(root: &Path, out: &Path, cu_files: &[PathBuf]) -> Nvcc {
    let mut r = Nvcc {
        path: None,
        version: String::new(),
        error: None,
        images: BTreeMap::new(),
        report: String::new(),
        sass: String::new(),
    };
    let nvcc = match find_nvcc(root) {
        Ok(p) => p,
        Err(e) => {
            println!("cargo:warning=GPU kernels not built: {e}. The CPU backend and the CUDA emulator are unaffected.");
            r.error = Some(e);
            return r;
        }
    };
    println!("cargo:rerun-if-changed={}", nvcc.display());
    r.path = Some(nvcc.clone());
    r.version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("release"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_default();

    let extra: Vec<String> = env::var("CUDA_NVCC_FLAGS")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let kdir = root.join("kernels");
    let gpu_dir = out.join("gpu");
    fs::create_dir_all(&gpu_dir).unwrap();

    // (module, target, output, is_cubin)
    let mut jobs = Vec::new();
    for f in cu_files {
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        for (target, ext) in [("compute_80", "ptx"), ("sm_80", "cubin"), ("sm_90", "cubin")] {
            jobs.push((
                stem.clone(),
                f.clone(),
                target,
                gpu_dir.join(format!("{stem}.{target}.{ext}")),
            ));
        }
    }
    // As many nvcc processes at a time as cargo gives this build jobs (each takes a core and ~1 GB).
    let workers = env::var("NUM_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2)
        .clamp(1, jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<String, String>>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let run = |(_, src, target, dst): &(String, PathBuf, &str, PathBuf)| -> Result<String, String> {
        let mut c = Command::new(&nvcc);
        c.args(["-std=c++17", "-O3", "-lineinfo", "-I"]).arg(&kdir);
        if target.starts_with("compute") {
            c.arg("-ptx").arg(format!("-arch={target}"));
        } else {
            c.arg("-cubin").arg(format!("-arch={target}")).args(["-Xptxas", "-v"]);
        }
        c.args(&extra).arg("-o").arg(dst).arg(src);
        match c.output() {
            Err(e) => Err(format!("cannot run {}: {e}", nvcc.display())),
            Ok(o) if !o.status.success() => Err(format!(
                "{} ({target}) failed ({}): {}{}",
                src.display(),
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Ok(o) => Ok(String::from_utf8_lossy(&o.stderr).to_string()),
        }
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                *slots[i].lock().unwrap() = Some(run(job));
            });
        }
    });
    let results: Vec<Result<String, String>> = slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap()
                .unwrap_or_else(|| Err("nvcc job not run".into()))
        })
        .collect();

    let mut errors = Vec::new();
    // kernel -> arch -> summary
    let mut usage: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((_, _, target, _), res) in jobs.iter().zip(&results) {
        match res {
            Err(e) => errors.push(e.clone()),
            Ok(stderr) => {
                writeln!(r.report, "{stderr}").unwrap();
                for (kernel, summary) in ptxas_summaries(stderr) {
                    usage.entry(kernel).or_default().push(format!("{target} {summary}"));
                }
            }
        }
    }
    for (kernel, archs) in &usage {
        println!("cargo:warning=ptxas {kernel}: {}", archs.join(" | "));
    }
    if errors.is_empty() {
        for f in cu_files {
            let stem = f.file_stem().unwrap().to_string_lossy().to_string();
            let img = |t: &str, e: &str| gpu_dir.join(format!("{stem}.{t}.{e}"));
            r.images.insert(
                stem.clone(),
                [img("compute_80", "ptx"), img("sm_80", "cubin"), img("sm_90", "cubin")],
            );
        }
    } else {
        let msg = errors.join("\n");
        for line in msg.lines().filter(|l| !l.trim().is_empty()).take(40) {
            println!("cargo:warning=nvcc: {line}");
        }
        println!("cargo:warning=GPU kernels not built: nvcc failed (see above); the CPU backend and emulator are fine");
        if env::var("LLAMAGEN_NVCC_REQUIRED").as_deref() == Ok("1") {
            panic!("LLAMAGEN_NVCC_REQUIRED=1 and nvcc failed:\n{msg}");
        }
        r.error = Some(msg);
    }
    r
}

/// cuobjdump: `$CUOBJDUMP`, `.toolchain/cuobjdump/nvidia/cu13/bin/cuobjdump` (scripts/setup.sh), then `PATH`. It needs
/// nvdisasm beside it or on `PATH`.
fn find_cuobjdump(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("CUOBJDUMP") {
        return (!p.is_empty() && Path::new(&p).is_file()).then(|| PathBuf::from(p));
    }
    let local = root.join(".toolchain/cuobjdump/nvidia/cu13/bin/cuobjdump");
    if local.is_file() {
        return Some(local);
    }
    Command::new("cuobjdump").arg("--version").output().ok()?;
    Some(PathBuf::from("cuobjdump"))
}

/// The SASS instruction mix of every kernel of every cubin: the instructions the kernel lab reports (tensor-core
/// MMAs, ldmatrix, cp.async, 16-byte global loads and stores, ...), one line per kernel and arch.
fn sass_mix(root: &Path, nvcc: &Nvcc) -> String {
    const KINDS: [&str; 11] = [
        "HMMA", "LDSM", "LDGSTS", "LDG128", "LDG", "STG128", "STG", "LDS", "STS", "BAR", "ALL",
    ];
    if nvcc.images.is_empty() {
        return "# no cubins (nvcc missing or failed)\n".into();
    }
    let Some(tool) = find_cuobjdump(root) else {
        return "# cuobjdump not found (scripts/setup.sh installs it into .toolchain/cuobjdump)\n".into();
    };
    println!("cargo:rerun-if-env-changed=CUOBJDUMP");
    let mut path = tool.parent().map(|d| d.as_os_str().to_owned()).unwrap_or_default();
    path.push(":");
    path.push(env::var_os("PATH").unwrap_or_default());
    let mut text = String::new();
    for [_, c80, c90] in nvcc.images.values() {
        for (arch, cubin) in [("sm_80", c80), ("sm_90", c90)] {
            let o = match Command::new(&tool).arg("-sass").arg(cubin).env("PATH", &path).output() {
                Ok(o) if o.status.success() => o,
                Ok(o) => return format!("# cuobjdump failed: {}\n", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => return format!("# cuobjdump: {e}\n"),
            };
            let mut cur: Option<(String, [usize; 11])> = None;
            let flush = |cur: &mut Option<(String, [usize; 11])>, text: &mut String| {
                if let Some((k, c)) = cur.take() {
                    let counts: Vec<String> = KINDS.iter().zip(c).map(|(n, v)| format!("{n}={v}")).collect();
                    text.push_str(&format!("{k} {arch} {}\n", counts.join(" ")));
                }
            };
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some(p) = line.find("Function : ") {
                    flush(&mut cur, &mut text);
                    cur = Some((line[p + 11..].trim().to_string(), [0; 11]));
                    continue;
                }
                let (Some((_, c)), Some(end)) = (cur.as_mut(), line.find("*/")) else {
                    continue;
                };
                if !line.trim_start().starts_with("/*") {
                    continue;
                }
                let mut toks = line[end + 2..].split_whitespace();
                let mut op = toks.next().unwrap_or("");
                if op.starts_with('@') {
                    op = toks.next().unwrap_or("");
                }
                let op = op.trim_end_matches(';');
                if op.is_empty() || op.starts_with("/*") {
                    continue;
                }
                // the opcode, with "128" appended for 16-byte global accesses (LDG.E.128 -> LDG128)
                let base = op.split('.').next().unwrap_or("");
                let wide = matches!(base, "LDG" | "STG") && op.split('.').any(|p| p == "128");
                let name = if wide { format!("{base}128") } else { base.to_string() };
                if let Some(i) = KINDS[..KINDS.len() - 1].iter().position(|k| *k == name) {
                    c[i] += 1;
                }
                c[KINDS.len() - 1] += 1;
            }
            flush(&mut cur, &mut text);
        }
    }
    text
}

/// ptxas -v output -> (kernel, "N regs, S B smem, K B stack, spills X/Y B") per entry function.
fn ptxas_summaries(stderr: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut kernel: Option<String> = None;
    let mut frame = String::new();
    for line in stderr.lines() {
        if let Some(p) = line.find("Compiling entry function '") {
            let rest = &line[p + "Compiling entry function '".len()..];
            kernel = rest.split('\'').next().map(String::from);
            frame.clear();
        } else if line.contains("bytes stack frame") {
            // "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
            let n: Vec<&str> = line
                .split(',')
                .map(|p| p.split_whitespace().next().unwrap_or("?"))
                .collect();
            if n.len() == 3 {
                frame = format!("stack {} B, spill st/ld {}/{} B", n[0], n[1], n[2]);
            }
        } else if let (Some(p), Some(k)) = (line.find("Used "), kernel.as_ref()) {
            let used = line[p..].trim();
            let regs = used.split_whitespace().nth(1).unwrap_or("?");
            let smem = used
                .split(',')
                .find(|s| s.contains("smem"))
                .map(|s| s.split_whitespace().next().unwrap_or("0").to_string())
                .unwrap_or_else(|| "0".into());
            v.push((k.clone(), format!("{regs} regs, {smem} B smem, {frame}")));
            kernel = None;
        }
    }
    v
}

// ------------------------------------------------------------------------------------------------------------------
// Generated Rust
// ------------------------------------------------------------------------------------------------------------------

fn rust_ident(name: &str) -> String {
    const KW: &[&str] = &[
        "as", "async", "await", "box", "break", "const", "continue", "crate", "do", "dyn", "else", "enum", "extern",
        "false", "final", "fn", "for", "if", "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut",
        "override", "priv", "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "try",
        "type", "typeof", "unsafe", "use", "virtual", "where", "while", "yield",
    ];
    if KW.contains(&name) {
        format!("{name}_")
    } else {
        name.to_string()
    }
}

fn rust_source(api: &Api, modules: &BTreeMap<String, String>, nvcc: &Nvcc, out: &Path, emulator: bool) -> String {
    let mut s = String::new();
    s.push_str(
        "// Generated by build.rs from kernels/llamagen_kernels.h and kernels/*.cu. Do not edit.\n\
         use crate::backend::cuda::launch::{ArgCode, DevPtr, DevPtrMut, KernelArg, LaunchConfig, Launcher};\n\n",
    );

    for (name, value) in &api.consts {
        writeln!(
            s,
            "/// `{name}` of `kernels/llamagen_kernels.h`.\npub const {name}: i32 = {value};"
        )
        .unwrap();
    }
    // Parameter structs.
    for st in &api.structs {
        writeln!(s, "/// Mirror of `{}` in `kernels/llamagen_kernels.h`.", st.name).unwrap();
        s.push_str("#[repr(C)]\n#[derive(Clone, Copy, Debug, Default, PartialEq)]\n");
        writeln!(s, "pub struct {} {{", st.name).unwrap();
        for (ty, f) in &st.fields {
            writeln!(s, "    pub {}: {},", rust_ident(f), scalar_rust(ty).unwrap()).unwrap();
        }
        s.push_str("}\n\n");
        writeln!(
            s,
            "// SAFETY: a #[repr(C)] struct of 4-byte scalars, passed by value like the C struct.\n\
             unsafe impl KernelArg for {0} {{\n    fn code(&self) -> ArgCode {{\n        \
             ArgCode::Struct(std::mem::size_of::<Self>())\n    }}\n}}\n\n\
             // SAFETY: 4-byte scalars only, so any bit pattern is a valid value (device buffers may hold it).\n\
             unsafe impl crate::backend::cuda::launch::DeviceRepr for {0} {{\n    const NAME: &'static str = \"{0}\";\n}}\n",
            st.name
        )
        .unwrap();
    }
    s.push_str(
        "/// (struct, field, offset) with field \"\" giving the size; same order as `llamagen_c_layouts` in C.\n\
         pub const RUST_LAYOUTS: &[(&str, &str, usize)] = &[\n",
    );
    for st in &api.structs {
        writeln!(s, "    (\"{0}\", \"\", std::mem::size_of::<{0}>()),", st.name).unwrap();
        for (_, f) in &st.fields {
            writeln!(
                s,
                "    (\"{0}\", \"{f}\", std::mem::offset_of!({0}, {1})),",
                st.name,
                rust_ident(f)
            )
            .unwrap();
        }
    }
    s.push_str("];\n\n");
    if emulator {
        let n: usize = api.structs.iter().map(|st| 1 + st.fields.len()).sum();
        writeln!(
            s,
            "unsafe extern \"C\" {{\n    static llamagen_c_layouts: [u64; {n}];\n}}\n\n\
             /// The C compiler's sizeof/offsetof for [`RUST_LAYOUTS`] (emulator builds only).\n\
             pub fn c_layouts() -> &'static [u64] {{\n    // SAFETY: a constant array defined by the generated C++ file.\n    \
             unsafe {{ &*std::ptr::addr_of!(llamagen_c_layouts) }}\n}}\n"
        )
        .unwrap();
    }

    // Kernel table and typed launchers.
    s.push_str(
        "/// One entry per kernel of the table in `kernels/llamagen_kernels.h`.\n\
         #[derive(Clone, Copy, Debug)]\npub struct KernelDecl {\n    pub name: &'static str,\n    \
         /// The `.cu` file (module) that defines it.\n    pub module: &'static str,\n    \
         /// Argument codes as the emulator registry reports them (P pointer, i/u/f scalar, S<n> struct).\n    \
         pub signature: &'static str,\n    pub selftest: bool,\n    pub c_decl: &'static str,\n}\n\n\
         pub const KERNELS: &[KernelDecl] = &[\n",
    );
    let struct_size = |n: &str| 4 * api.structs.iter().find(|s| s.name == n).unwrap().fields.len();
    for k in &api.kernels {
        let sig: Vec<String> = k
            .params
            .iter()
            .map(|p| match &p.kind {
                ParamKind::Ptr { .. } => "P".to_string(),
                ParamKind::Scalar(c) => match c.as_str() {
                    "int32_t" => "i".into(),
                    "uint32_t" => "u".into(),
                    _ => "f".into(),
                },
                ParamKind::Struct(n) => format!("S{}", struct_size(n)),
            })
            .collect();
        writeln!(
            s,
            "    KernelDecl {{ name: \"{}\", module: \"{}\", signature: \"{}\", selftest: {}, c_decl: {:?} }},",
            k.name,
            modules[&k.name],
            sig.join(","),
            k.selftest,
            k.decl
        )
        .unwrap();
    }
    s.push_str("];\n\n");
    for k in &api.kernels {
        writeln!(s, "/// Launches `{}` (kernels/{}.cu).", k.decl, modules[&k.name]).unwrap();
        let mut args = Vec::new();
        let mut names = Vec::new();
        for p in &k.params {
            let id = rust_ident(&p.name);
            let ty = match &p.kind {
                ParamKind::Ptr { elem, mutable: true } => format!("DevPtrMut<'_, {}>", elem_rust(elem).unwrap_or(elem)),
                ParamKind::Ptr { elem, mutable: false } => format!("DevPtr<'_, {}>", elem_rust(elem).unwrap_or(elem)),
                ParamKind::Scalar(c) => scalar_rust(c).unwrap().to_string(),
                ParamKind::Struct(n) => n.clone(),
            };
            args.push(format!("{id}: {ty}"));
            names.push(format!("&{id}"));
        }
        writeln!(
            s,
            "#[allow(clippy::too_many_arguments)]\npub fn {}<L: Launcher + ?Sized>(l: &L, cfg: LaunchConfig, {}) -> \
             crate::Result<()> {{\n    l.launch(\"{}\", cfg, &[{}])\n}}\n",
            k.name,
            args.join(", "),
            k.name,
            names.join(", ")
        )
        .unwrap();
    }

    // GPU images.
    s.push_str(
        "/// One compiled `.cu` file: PTX for compute_80 (JIT fallback) and cubins for sm_80 and sm_90.\n\
         #[derive(Clone, Copy, Debug)]\npub struct KernelModule {\n    pub name: &'static str,\n    \
         pub ptx_compute_80: &'static str,\n    pub cubin_sm_80: &'static [u8],\n    pub cubin_sm_90: &'static [u8],\n}\n\n\
         /// Empty when nvcc was missing or failed (see [`NVCC`]).\npub const MODULES: &[KernelModule] = &[\n",
    );
    for (m, [ptx, c80, c90]) in &nvcc.images {
        writeln!(
            s,
            "    KernelModule {{ name: \"{m}\", ptx_compute_80: include_str!({:?}), cubin_sm_80: include_bytes!({:?}), \
             cubin_sm_90: include_bytes!({:?}) }},",
            ptx.display().to_string(),
            c80.display().to_string(),
            c90.display().to_string()
        )
        .unwrap();
    }
    s.push_str("];\n\n");
    let report = out.join("gpu/ptxas.txt");
    fs::create_dir_all(out.join("gpu")).unwrap();
    fs::write(&report, &nvcc.report).unwrap();
    let mix = out.join("gpu/sass_mix.txt");
    fs::write(&mix, &nvcc.sass).unwrap();
    writeln!(
        s,
        "/// How the GPU images were built.\n#[derive(Clone, Copy, Debug)]\npub struct NvccStatus {{\n    \
         pub path: Option<&'static str>,\n    pub version: &'static str,\n    \
         /// Why [`MODULES`] is empty: nvcc not found, or its error output.\n    pub error: Option<&'static str>,\n    \
         /// ptxas -v output of the cubin builds.\n    pub ptxas_report: &'static str,\n    \
         /// SASS instruction mix per kernel and arch (cuobjdump), one line each: `kernel arch NAME=count ...`;\n    \
         /// a line starting with `#` says why it is missing.\n    pub sass_mix: &'static str,\n}}\n\n\
         pub const NVCC: NvccStatus = NvccStatus {{\n    path: {:?},\n    version: {:?},\n    error: {:?},\n    \
         ptxas_report: include_str!({:?}),\n    sass_mix: include_str!({:?}),\n}};",
        nvcc.path.as_ref().map(|p| p.display().to_string()),
        nvcc.version,
        nvcc.error,
        report.display().to_string(),
        mix.display().to_string()
    )
    .unwrap();
    s
}
