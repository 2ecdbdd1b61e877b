//! What the benches share: criterion's settings and the group sizes measured.

use std::time::Duration;

use criterion::Criterion;

/// Short, flat sampling: these benches cover many sizes on a 2-core machine.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// n = 10 and 100, and 1000 with `QPC_BENCH_LARGE=1`.
pub fn group_sizes() -> Vec<usize> {
    let mut sizes = vec![10, 100];
    if std::env::var("QPC_BENCH_LARGE").is_ok_and(|value| value == "1") {
        sizes.push(1000);
    }
    sizes
}
