//! Giving memory back after a load (issue 10 item 6): glibc keeps what a peak allocated in its
//! arenas after it is freed (each worker thread has its own arena, and only the top of the
//! main heap is trimmed by `free`), so a daemon that served 8,000 connections once kept that
//! RSS for good. A background thread looks at the allocator every 2 s (`CHECK_EVERY`) and,
//! when a lot of it is free (`worth_trimming`), asks glibc to return the free pages
//! (`malloc_trim(0)`, which `madvise`s every whole free page of every arena).
//!
//! Owns: that thread. Must not touch: anything else (it reads allocator statistics only).
//! Under a steady load little is free and nothing happens; right after a load drops, the
//! memory goes back within a check or two. Not built for other C libraries (musl returns
//! memory on its own).

use std::time::Duration;

/// How often the allocator is looked at (`mallinfo2` walks each arena's free lists).
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Free bytes below which nothing is worth doing.
const MIN_FREE: usize = 8 << 20;

/// Trim when at least `MIN_FREE` is free and free memory is at least a third of the heap: a
/// load has gone and left its memory behind, rather than the churn of a steady load.
fn worth_trimming(free: usize, in_use: usize) -> bool {
    free >= MIN_FREE && free >= in_use / 2
}

/// Starts the trimming thread (once per process).
pub fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("mtcpd-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(CHECK_EVERY);
                    // SAFETY: plain glibc calls with no arguments to get wrong.
                    let info = unsafe { libc::mallinfo2() };
                    if worth_trimming(info.fordblks, info.uordblks) {
                        // SAFETY: as above; trims every arena, keeping no padding.
                        let released = unsafe { libc::malloc_trim(0) };
                        tracing::debug!(
                            free = info.fordblks,
                            in_use = info.uordblks,
                            released,
                            "allocator: free memory given back to the system"
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the memory trimming thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_a_large_free_share() {
        assert!(!worth_trimming(1 << 20, 0), "too little to bother");
        assert!(!worth_trimming(10 << 20, 100 << 20), "steady churn");
        assert!(worth_trimming(40 << 20, 20 << 20), "a load went away");
        assert!(worth_trimming(MIN_FREE, 2 * MIN_FREE));
    }
}
