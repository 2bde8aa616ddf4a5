//! Thread-pinning glue, the timer slack of napping PMDs, and the cycle counter the PMDs
//! account their time in.

/// Pins the calling thread to `core`. False when the core is not available to this
/// process (offline, or outside its CPU set).
pub(crate) fn pin_current_thread(core: usize) -> bool {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.id == core)
        .is_some_and(core_affinity::set_for_current)
}

/// Lets the calling thread's timed sleeps end within `slack` of their deadline (Linux
/// defaults to 50 µs, longer than a short nap). Best effort: false if the kernel refused.
pub(crate) fn set_timer_slack(slack: std::time::Duration) -> bool {
    let ns = libc::c_ulong::try_from(slack.as_nanos().max(1)).unwrap_or(libc::c_ulong::MAX);
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes the calling
    // thread's timer slack; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0 }
}

/// A monotonic cycle count: the time-stamp counter on x86-64, nanoseconds elsewhere.
#[inline]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86-64; it only reads the time-stamp counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cycles_move_forward() {
        let a = super::cycles();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(super::cycles() > a);
    }
}
