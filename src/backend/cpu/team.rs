//! `Team`: the CPU backend's fork-join for the decode step's small ops, in place of rayon's.
//!
//! A GPT-B decode step is ~110 ops of 5-200 µs each. Measured on the 2-core AVX2 box (`matmul::tests::
//! step_stream`), summing GPT-B's 49 weight matrices with one rayon `par_chunks` each took 7.0-8.6 ms where one
//! contiguous buffer of the same 195 MB took 5.3-6.3 ms: rayon's fork-join (a sleeping worker is woken through
//! the kernel, an IPI on a VM) costs ~30 µs per op. Here the workers spin on one atomic word for a short while
//! after each job (`SPIN`), so the next op starts in well under a microsecond; after that they park.
//!
//! A job is `n` independent tasks `f(0..n)`, claimed one at a time from a shared counter by the caller and the
//! workers. Which thread runs a task never changes what the task computes, so results stay independent of the
//! schedule (and of the batch). One job runs at a time: concurrent callers (tests on several threads) take turns;
//! a job that starts another job runs it on the calling thread. A task must not wait for rayon work: a rayon
//! worker that called `run` meanwhile would be waiting for its turn.
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker keeps spinning before it parks: longer than any gap between two ops of a decode step,
/// short enough not to hold a core when the engine has moved on (VQ decode on rayon, writing PNGs).
const SPIN: Duration = Duration::from_millis(2);

/// Tasks per job at most (the counter's width in `State`).
pub const MAX_TASKS: usize = u16::MAX as usize;

/// `[epoch: 32 | claimed: 16 | total: 16]` in one word, so a task is claimed with one compare-and-swap that also
/// checks it belongs to the current job.
#[derive(Clone, Copy)]
struct State(u64);

impl State {
    fn new(epoch: u32, total: usize) -> Self {
        State(((epoch as u64) << 32) | total as u64)
    }
    fn claimed(self) -> usize {
        ((self.0 >> 16) & 0xffff) as usize
    }
    fn total(self) -> usize {
        (self.0 & 0xffff) as usize
    }
    fn has_work(self) -> bool {
        self.claimed() < self.total()
    }
}

type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// The job being run: lives on the caller's stack for the duration of `run`.
struct Job<'a> {
    f: Task<'a>,
    panicked: AtomicBool,
}

struct Shared {
    state: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    /// Threads between "I may claim a task of the current job" and "I hold no task": the caller waits for zero.
    inflight: AtomicUsize,
    sleepers: AtomicUsize,
    threads: OnceLock<Vec<Thread>>,
}

pub struct Team {
    shared: &'static Shared,
    workers: usize,
    turn: Mutex<u32>,
}

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

impl Shared {
    /// Claims and runs tasks of the job in `state` until none is left.
    fn work(&self) {
        self.inflight.fetch_add(1, SeqCst);
        loop {
            let s = State(self.state.load(SeqCst));
            if !s.has_work() {
                break;
            }
            if self
                .state
                .compare_exchange(s.0, s.0 + (1 << 16), SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            // SAFETY: a task of this job was claimed, so the caller has not yet seen every task claimed and is
            // still inside `run`, waiting for `inflight` (which counts this thread) to reach zero: the job lives.
            let job = unsafe { &*self.job.load(SeqCst) };
            let f = job.f;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(s.claimed()))).is_err() {
                job.panicked.store(true, SeqCst);
            }
        }
        self.inflight.fetch_sub(1, SeqCst);
    }

    fn worker(&self) {
        INSIDE.with(|i| i.set(true));
        let mut idle_since = Instant::now();
        loop {
            if State(self.state.load(SeqCst)).has_work() {
                self.work();
                idle_since = Instant::now();
            } else if idle_since.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                // Either `run` sees this sleeper and unparks, or this thread sees its new state (both SeqCst).
                self.sleepers.fetch_add(1, SeqCst);
                if !State(self.state.load(SeqCst)).has_work() {
                    thread::park();
                }
                self.sleepers.fetch_sub(1, SeqCst);
                idle_since = Instant::now();
            }
        }
    }
}

impl Team {
    /// The process-wide team: as many threads as rayon's pool (`--threads`), the caller counting as one.
    pub fn global() -> &'static Team {
        static TEAM: OnceLock<Team> = OnceLock::new();
        TEAM.get_or_init(|| Team::new(rayon::current_num_threads()))
    }

    fn new(threads: usize) -> Team {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            inflight: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            threads: OnceLock::new(),
        }));
        let workers = threads.saturating_sub(1);
        let handles = (0..workers)
            .filter_map(|i| {
                thread::Builder::new()
                    .name(format!("llamagen-team-{i}"))
                    .spawn(move || shared.worker())
                    .ok()
            })
            .map(|h| h.thread().clone())
            .collect::<Vec<_>>();
        let workers = handles.len();
        let _ = shared.threads.set(handles);
        Team {
            shared,
            workers,
            turn: Mutex::new(0),
        }
    }

    /// Runs `f(0)`, ..., `f(n - 1)`, each exactly once, spread over the team; returns when all have finished.
    /// A panic in a task is re-raised here once every task has finished.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || self.workers == 0 || INSIDE.with(|i| i.get()) || n > MAX_TASKS {
            (0..n).for_each(f);
            return;
        }
        let mut epoch = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        *epoch = epoch.wrapping_add(1);
        let job = Job {
            f,
            panicked: AtomicBool::new(false),
        };
        let sh = self.shared;
        // SAFETY (lifetime): the pointer is used only by threads that claimed a task of this job, and `run` does
        // not return (nor unwind: `work` catches panics) before every such thread has left `work`.
        sh.job.store(&job as *const Job as *mut Job<'static>, SeqCst);
        sh.state.store(State::new(*epoch, n).0, SeqCst);
        if sh.sleepers.load(SeqCst) > 0 {
            sh.threads.get().into_iter().flatten().for_each(Thread::unpark);
        }
        INSIDE.with(|i| i.set(true));
        sh.work();
        INSIDE.with(|i| i.set(false));
        while sh.inflight.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        drop(epoch);
        if job.panicked.load(SeqCst) {
            panic!("a CPU backend task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once() {
        let team = Team::new(3);
        for n in [0usize, 1, 2, 7, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for _ in 0..50 {
                team.run(n, &|t| {
                    hits[t].fetch_add(1, SeqCst);
                });
            }
            assert!(hits.iter().all(|h| h.load(SeqCst) == 50), "n = {n}");
        }
    }

    #[test]
    fn concurrent_callers_and_nested_jobs() {
        let team = Team::new(2);
        let total = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        team.run(8, &|_| {
                            // A nested job runs on this thread.
                            team.run(3, &|_| {
                                total.fetch_add(1, SeqCst);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 200 * 8 * 3);
    }

    #[test]
    fn parked_workers_wake_up() {
        let team = Team::new(2);
        team.run(4, &|_| {});
        thread::sleep(SPIN * 3);
        let ids = Mutex::new(std::collections::HashSet::new());
        for _ in 0..2000 {
            team.run(16, &|_| {
                ids.lock().unwrap().insert(thread::current().id());
                thread::sleep(Duration::from_micros(20));
            });
            if ids.lock().unwrap().len() == 2 {
                return;
            }
        }
        panic!("the worker never took a task after parking");
    }

    #[test]
    fn a_panicking_task_is_reported_after_the_others_finish() {
        let team = Team::new(2);
        let done = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(32, &|t| {
                if t == 5 {
                    panic!("task 5");
                }
                done.fetch_add(1, SeqCst);
            })
        }));
        assert!(r.is_err());
        assert_eq!(done.load(SeqCst), 31);
        // The team still works.
        let n = AtomicUsize::new(0);
        team.run(10, &|_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 10);
    }
}
