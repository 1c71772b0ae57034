//! The thread pool used by the core.
//!
//! `CPX_NUM_THREADS` sets its size (1 runs everything on the calling thread). A pool made
//! before a `fork` has no threads in the child (torch and vLLM fork workers), so the pool
//! remembers the process id that built it and a forked child builds its own.

use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);

/// Number of threads requested by `CPX_NUM_THREADS`, or the number of CPUs.
pub fn num_threads() -> usize {
    std::env::var("CPX_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn pool() -> Option<Arc<ThreadPool>> {
    let threads = num_threads();
    if threads <= 1 {
        return None;
    }
    let pid = std::process::id();
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, pool)) = guard.as_ref() {
        if *owner == pid && pool.current_num_threads() == threads {
            return Some(pool.clone());
        }
    }
    if let Some((owner, old)) = guard.take() {
        if owner != pid {
            // Its worker threads do not exist in this (forked) process: dropping it would
            // wait on them forever.
            std::mem::forget(old);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cpx-{i}"))
        .build()
        .ok()
        .map(Arc::new)?;
    *guard = Some((pid, pool.clone()));
    Some(pool)
}

/// Runs `f` inside the cpx pool; rayon calls within `f` use it. With one thread, `f` runs on
/// a one-thread pool so that nested rayon calls never touch rayon's global pool.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(p) => p.install(f),
        None => single().install(f),
    }
}

fn single() -> Arc<ThreadPool> {
    static SINGLE: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut guard = SINGLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, p)) = guard.as_ref() {
        if *owner == pid {
            return p.clone();
        }
    }
    if let Some((_, old)) = guard.take() {
        std::mem::forget(old);
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "cpx-0".into())
            .build()
            .expect("a one-thread pool can always be built"),
    );
    *guard = Some((pid, p.clone()));
    p
}
