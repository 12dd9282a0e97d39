//! Running the `llamagen` binary in tests: arguments, clean success, clean failure.
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// Turns a mixed list of `&str`, `String`, `&Path` and `PathBuf` into command-line arguments.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {{
        let v: Vec<std::ffi::OsString> = vec![$(std::ffi::OsString::from($a)),*];
        v
    }};
}

pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cwd: &Path, args: &[OsString]) -> Run {
    run_env(cwd, args, &[])
}

/// `run` with extra environment variables (`LLAMAGEN_CPU_KERNELS`, ...); the caller's own `LLAMAGEN_CPU_KERNELS`
/// is not inherited.
pub fn run_env(cwd: &Path, args: &[OsString], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("LLAMAGEN_CPU_KERNELS")
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .output()
        .expect("cannot start the llamagen binary");
    Run {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn show(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs and asserts a zero exit.
pub fn ok(cwd: &Path, args: &[OsString]) -> Run {
    let r = run(cwd, args);
    assert!(
        r.success,
        "`llamagen {}` failed ({:?}):\n{}",
        show(args),
        r.code,
        r.stderr
    );
    r
}

/// Runs and asserts a clean failure: non-zero exit (not a signal), no panic, and every needle in stderr.
pub fn fails(cwd: &Path, args: &[OsString], needles: &[&str]) -> String {
    fails_env(cwd, args, &[], needles)
}

/// `fails` with extra environment variables.
pub fn fails_env(cwd: &Path, args: &[OsString], env: &[(&str, &str)], needles: &[&str]) -> String {
    let r = run_env(cwd, args, env);
    let cmd = show(args);
    assert!(
        !r.success,
        "`llamagen {cmd}` succeeded but should have failed:\n{}",
        r.stderr
    );
    assert!(
        matches!(r.code, Some(c) if c != 0),
        "`llamagen {cmd}` died by a signal:\n{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked"),
        "`llamagen {cmd}` panicked:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.matches("(os error").count() <= 1,
        "`llamagen {cmd}`: the cause is repeated:\n{}",
        r.stderr
    );
    // Shown with --nocapture, to review the messages.
    eprintln!("llamagen {cmd}\n  -> {}", r.stderr.trim_end());
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "`llamagen {cmd}`: the message does not mention `{n}`:\n{}",
            r.stderr
        );
    }
    r.stderr
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
