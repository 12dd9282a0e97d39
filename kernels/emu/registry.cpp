/*
 * registry.cpp: the emulator's kernel registry, derived from the kernel table in llamagen_kernels.h.
 *
 * For each X(name, params) entry a variadic template builds (1) a trampoline that casts args[i] to the i-th
 * parameter type of `name` and calls it, as cuLaunchKernel does with its void** argument array, and (2) the
 * argument signature string that the Rust launcher compares with its own before every launch, so a wrong width,
 * a missing argument or a swapped pointer/scalar is an error, not undefined behaviour.
 */
#include "cuemu.h"

#include "../llamagen_kernels.h"
#include "cuemu_internal.h"

#include <string>
#include <utility>

namespace {

template <typename T> std::string arg_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        return "P";
    } else if constexpr (std::is_same_v<U, int32_t>) {
        return "i";
    } else if constexpr (std::is_same_v<U, uint32_t>) {
        return "u";
    } else if constexpr (std::is_same_v<U, float>) {
        return "f";
    } else if constexpr (std::is_same_v<U, int64_t>) {
        return "l";
    } else if constexpr (std::is_same_v<U, uint64_t>) {
        return "L";
    } else if constexpr (std::is_class_v<U> && std::is_trivially_copyable_v<U>) {
        return "S" + std::to_string(sizeof(U));
    } else {
        static_assert(sizeof(U) == 0, "unsupported kernel parameter type");
        return "";
    }
}

template <typename F> struct Signature;
template <typename... A> struct Signature<void(A...)> {
    static std::string text() {
        std::string s;
        ((s += (s.empty() ? "" : ","), s += arg_code<A>()), ...);
        return s;
    }
    template <size_t... I> static void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
        (void)args;
        f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
    }
    static constexpr size_t arity = sizeof...(A);
};

template <auto F> void thunk(void** args) {
    using Fn = std::remove_pointer_t<decltype(F)>;
    Signature<Fn>::call(F, args, std::make_index_sequence<Signature<Fn>::arity>{});
}

template <auto F> const char* signature() {
    static const std::string s = Signature<std::remove_pointer_t<decltype(F)>>::text();
    return s.c_str();
}

#define CUEMU_REGISTRY_ENTRY(name, params) {#name, &thunk<&name>, &signature<&name>},
const cuemu::KernelEntry kTable[] = {LLAMAGEN_KERNELS(CUEMU_REGISTRY_ENTRY)
                                         LLAMAGEN_SELFTEST_KERNELS(CUEMU_REGISTRY_ENTRY)};
#undef CUEMU_REGISTRY_ENTRY

} // namespace

const cuemu::KernelEntry* cuemu::kernel_table(size_t* count) {
    *count = sizeof(kTable) / sizeof(kTable[0]);
    return kTable;
}
