//! A model's targets in routing order ([`Ranked`], published by its `FederatedRouterActor`)
//! and the pick handlers make from it with [`pick`]: the best tier first, ties within a
//! tier broken by live in-flight count and latency. Plain data and functions: handlers
//! read this without sending a message.

use std::sync::Arc;

use crate::routing::target::{BreakerView, Lease, Target};

/// Tier of a target that cannot take requests now (breaker open).
pub const UNROUTABLE: u8 = u8::MAX;

/// A model's targets in routing order, as last published by its router.
#[derive(Debug, Default)]
pub struct Ranked {
    pub entries: Vec<(u8, Arc<Target>)>,
    /// Entries (indices) whose half-open breaker waits for a request to probe it (targets
    /// without active health checks): [`pick`] offers them the next request first, so a
    /// recovered target is probed even while others are healthy. Usually empty.
    pub probes: Vec<usize>,
}

impl Ranked {
    pub fn rank(targets: &[Arc<Target>]) -> Ranked {
        let mut entries: Vec<(u8, Arc<Target>)> = targets
            .iter()
            .map(|t| (t.tier().unwrap_or(UNROUTABLE), Arc::clone(t)))
            .collect();
        // Stable: within a tier, the fixtures' order is kept.
        entries.sort_by_key(|(tier, _)| *tier);
        let probes = entries
            .iter()
            .enumerate()
            .filter(|(_, (tier, t))| {
                *tier != UNROUTABLE && t.breaker() == BreakerView::HalfOpen && t.request_probes()
            })
            .map(|(i, _)| i)
            .collect();
        Ranked { entries, probes }
    }
}

/// Restricts a pick to the targets of one cluster and framework (the pinned routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub cluster: String,
    pub framework: String,
}

impl Pin {
    pub fn matches(&self, target: &Target) -> bool {
        target.spec.cluster == self.cluster && target.spec.framework == self.framework
    }
}

/// Picks a target and takes a lease on it: the best tier that has a target able to take
/// the request, and within it the least in-flight, then the lowest latency (see
/// [`least_loaded`]). Only targets
/// `accept` takes are considered (pinning, the caller's access); targets in `exclude`
/// (already tried by this request) are skipped.
pub fn pick(
    ranked: &Ranked,
    accept: &dyn Fn(&Target) -> bool,
    exclude: &[Arc<Target>],
) -> Option<Lease> {
    let entries = &ranked.entries;
    let eligible = |t: &Arc<Target>| accept(t) && !exclude.iter().any(|x| Arc::ptr_eq(x, t));
    // A half-open target that only a request can probe takes the next request (one at a
    // time: `try_lease` lets one probe through).
    for &i in &ranked.probes {
        if eligible(&entries[i].1) {
            if let Some(lease) = entries[i].1.try_lease() {
                return Some(lease);
            }
        }
    }
    let mut rejected: Vec<usize> = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let tier = entries[start].0;
        if tier == UNROUTABLE {
            break;
        }
        let end = entries[start..]
            .iter()
            .position(|(t, _)| *t != tier)
            .map_or(entries.len(), |n| start + n);
        loop {
            let open = |i: &usize| !rejected.contains(i) && eligible(&entries[*i].1);
            let Some(i) = least_loaded(entries, (start..end).filter(open)) else {
                break;
            };
            match entries[i].1.try_lease() {
                Some(lease) => return Some(lease),
                // Its breaker opened since the snapshot, or another request has the probe.
                None => rejected.push(i),
            }
        }
        start = end;
    }
    None
}

/// Latencies within this much of the fastest (a factor, plus [`LATENCY_SLACK_US`]) count
/// as equal: the difference is noise, and preferring the faster one would starve the other
/// at low concurrency, so its latency would never be measured again.
const LATENCY_TOLERANCE: f64 = 1.5;
const LATENCY_SLACK_US: u64 = 1_000;

thread_local! {
    /// Turns among equally good targets (per worker thread: no shared counter to contend on).
    static ROTATION: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Of `candidates` (indices into `entries`), the fewest in flight; among those, the fastest
/// by latency average, taking turns among those about as fast. A target without a latency
/// sample (0: new, recovered, or not measured for a while) counts as fastest, so it is
/// measured. One pass, each target's counters read once: other threads change them
/// meanwhile, so a second look could disagree with the first.
fn least_loaded(
    entries: &[(u8, Arc<Target>)],
    candidates: impl Iterator<Item = usize>,
) -> Option<usize> {
    let turn = ROTATION.with(|r| {
        let n = r.get();
        r.set(n.wrapping_add(1));
        n
    });
    // The pick so far, its in-flight count, the lowest latency among its equals, and how
    // many equals were seen (the newest replaces the pick one turn in `ties`: each of n
    // equals is picked once in n turns).
    let mut best: Option<(usize, u32, u64)> = None;
    let mut ties = 0usize;
    for i in candidates {
        let target = &entries[i].1;
        let (in_flight, ewma) = (target.in_flight(), target.ewma_ttfb_us());
        let Some((_, best_in_flight, best_ewma)) = best else {
            best = Some((i, in_flight, ewma));
            ties = 1;
            continue;
        };
        let near = |a: u64, b: u64| {
            let (low, high) = (a.min(b), a.max(b));
            low > 0 && high <= (low as f64 * LATENCY_TOLERANCE) as u64 + LATENCY_SLACK_US
                || high == 0
        };
        if in_flight < best_in_flight
            || (in_flight == best_in_flight && ewma < best_ewma && !near(ewma, best_ewma))
        {
            best = Some((i, in_flight, ewma));
            ties = 1;
        } else if in_flight == best_in_flight && near(ewma, best_ewma) {
            ties += 1;
            let low = ewma.min(best_ewma);
            best = Some(match best {
                // `ties - 1`: the first turn keeps the first in file order.
                Some(_) if turn % ties == ties - 1 => (i, in_flight, low),
                Some((j, f, _)) => (j, f, low),
                None => (i, in_flight, low),
            });
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::TargetSpec;
    use crate::routing::target::Health;
    use std::time::Duration;

    fn target(slug: &str, cluster: &str) -> Arc<Target> {
        let spec = TargetSpec::for_test(slug, cluster);
        Arc::new(Target::new(spec, None, Duration::from_secs(1)))
    }

    #[test]
    fn healthy_before_unknown_before_probe_before_unhealthy() {
        let (a, b, c, d, e) = (
            target("a", "x"),
            target("b", "x"),
            target("c", "x"),
            target("d", "x"),
            target("e", "x"),
        );
        a.publish(Health::Unhealthy, BreakerView::Closed, 0);
        b.publish(Health::Healthy, BreakerView::HalfOpen, 0);
        c.publish(Health::Unknown, BreakerView::Closed, 0);
        d.publish(Health::Healthy, BreakerView::Open, 0);
        e.publish(Health::Healthy, BreakerView::Closed, 0);
        let ranked = Ranked::rank(&[a.clone(), b.clone(), c.clone(), d.clone(), e.clone()]);
        let order: Vec<&str> = ranked.entries.iter().map(|(_, t)| t.slug()).collect();
        assert_eq!(order, vec!["e", "c", "b", "a", "d"]);

        let mut tried = Vec::new();
        let mut picked = Vec::new();
        while let Some(lease) = pick(&ranked, &|_| true, &tried) {
            picked.push(lease.target().slug().to_string());
            tried.push(Arc::clone(lease.target()));
        }
        assert_eq!(
            picked,
            vec!["e", "c", "b", "a"],
            "open breaker never picked"
        );
    }

    #[test]
    fn a_pick_always_finds_a_target_while_other_threads_move_its_counts() {
        // Other workers take and drop leases (in flight) and the actors publish latencies
        // between the reads of one pick: a pick must still return a target, never
        // nothing (a spurious 503) or a panic. Two targets whose latencies swing both ways
        // across the "about as fast" bound, 0 included.
        let (a, b) = (target("a", "x"), target("b", "x"));
        a.publish(Health::Healthy, BreakerView::Closed, 1_000);
        b.publish(Health::Healthy, BreakerView::Closed, 1_000);
        let ranked = Ranked::rank(&[a.clone(), b.clone()]);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let movers: Vec<_> = (0..2)
            .map(|n| {
                let (a, b, stop) = (Arc::clone(&a), Arc::clone(&b), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 50_000_000 {
                        i += 1;
                        if n == 0 {
                            drop(a.try_lease());
                        } else {
                            a.publish(Health::Healthy, BreakerView::Closed, (i % 7) * 900);
                            b.publish(Health::Healthy, BreakerView::Closed, (i % 5) * 1_300);
                        }
                    }
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut picks = 0u32;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while std::time::Instant::now() < deadline && picks < 500_000 {
                assert!(
                    pick(&ranked, &|_| true, &[]).is_some(),
                    "pick {picks} found none"
                );
                picks += 1;
            }
        }));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for m in movers {
            m.join().unwrap();
        }
        assert!(result.is_ok(), "a pick failed while counts moved");
    }

    #[test]
    fn least_in_flight_wins_within_a_tier() {
        let (a, b) = (target("a", "x"), target("b", "x"));
        a.publish(Health::Healthy, BreakerView::Closed, 1_000);
        b.publish(Health::Healthy, BreakerView::Closed, 9_000);
        let ranked = Ranked::rank(&[a.clone(), b.clone()]);
        let first = pick(&ranked, &|_| true, &[]).unwrap();
        assert_eq!(
            first.target().slug(),
            "a",
            "lower latency wins a tie on in-flight"
        );
        let second = pick(&ranked, &|_| true, &[]).unwrap();
        assert_eq!(second.target().slug(), "b", "a has one in flight now");
        let third = pick(&ranked, &|_| true, &[]).unwrap();
        assert_eq!(third.target().slug(), "a");
    }

    fn share_of_sequential_picks(ranked: &Ranked, rounds: usize) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = ranked
            .entries
            .iter()
            .map(|(_, t)| (t.slug().to_string(), 0))
            .collect();
        for _ in 0..rounds {
            // Dropped at once: every pick sees nothing in flight, the case where only the
            // latency decides.
            let lease = pick(ranked, &|_| true, &[]).unwrap();
            let slug = lease.target().slug();
            if let Some(c) = counts.iter_mut().find(|(s, _)| s == slug) {
                c.1 += 1;
            }
        }
        counts
    }

    #[test]
    fn about_equally_fast_targets_take_turns_when_nothing_is_in_flight() {
        let (a, b, slow) = (target("a", "x"), target("b", "x"), target("slow", "x"));
        a.publish(Health::Healthy, BreakerView::Closed, 2_000);
        b.publish(Health::Healthy, BreakerView::Closed, 2_900);
        slow.publish(Health::Healthy, BreakerView::Closed, 20_000);
        let ranked = Ranked::rank(&[a, b, slow]);
        let counts = share_of_sequential_picks(&ranked, 10);
        assert_eq!(
            counts,
            vec![("a".into(), 5), ("b".into(), 5), ("slow".into(), 0)],
            "2.9 ms is within 1.5 × 2 ms + 1 ms of the fastest; 20 ms is not"
        );
    }

    #[test]
    fn a_target_without_a_latency_sample_is_tried_first() {
        let (a, fresh) = (target("a", "x"), target("fresh", "x"));
        a.publish(Health::Healthy, BreakerView::Closed, 500);
        fresh.publish(Health::Healthy, BreakerView::Closed, 0);
        let ranked = Ranked::rank(&[a, fresh]);
        assert_eq!(
            share_of_sequential_picks(&ranked, 4),
            vec![("a".into(), 0), ("fresh".into(), 4)]
        );
    }

    #[test]
    fn pin_restricts_to_cluster_and_framework() {
        let (a, b) = (target("a", "sophia"), target("b", "polaris"));
        a.publish(Health::Healthy, BreakerView::Closed, 0);
        b.publish(Health::Unhealthy, BreakerView::Closed, 0);
        let ranked = Ranked::rank(&[a, b]);
        let pin = Pin {
            cluster: "polaris".into(),
            framework: "vllm".into(),
        };
        assert_eq!(
            pick(&ranked, &|t| pin.matches(t), &[])
                .unwrap()
                .target()
                .slug(),
            "b"
        );
        let nowhere = Pin {
            cluster: "polaris".into(),
            framework: "sglang".into(),
        };
        assert!(pick(&ranked, &|t| nowhere.matches(t), &[]).is_none());
    }

    #[test]
    fn a_half_open_target_without_health_checks_takes_the_next_request_as_its_probe() {
        let (a, b) = (target("a", "x"), target("b", "x"));
        a.publish(Health::Healthy, BreakerView::Closed, 0);
        b.set_request_probes(true);
        b.publish(Health::Healthy, BreakerView::HalfOpen, 0);
        let ranked = Ranked::rank(&[a.clone(), b.clone()]);
        assert_eq!(ranked.probes.len(), 1);
        let probe = pick(&ranked, &|_| true, &[]).unwrap();
        assert_eq!(probe.target().slug(), "b", "the probe goes first");
        assert!(probe.is_probe());
        // While the probe is out, requests go to the healthy target.
        let next = pick(&ranked, &|_| true, &[]).unwrap();
        assert_eq!(next.target().slug(), "a");
        // A request that already tried b, or may not use it, is not its probe.
        drop(probe);
        let tried = [Arc::clone(&b)];
        assert_eq!(
            pick(&ranked, &|_| true, &tried).unwrap().target().slug(),
            "a"
        );
        assert_eq!(
            pick(&ranked, &|t| t.slug() != "b", &[])
                .unwrap()
                .target()
                .slug(),
            "a"
        );

        // With active health checks the check is the probe: b keeps its tier.
        b.set_request_probes(false);
        let ranked = Ranked::rank(&[a.clone(), b]);
        assert!(ranked.probes.is_empty());
        assert_eq!(pick(&ranked, &|_| true, &[]).unwrap().target().slug(), "a");
    }

    #[test]
    fn half_open_target_admits_one_probe_then_falls_through() {
        let (a, b) = (target("a", "x"), target("b", "x"));
        a.publish(Health::Healthy, BreakerView::HalfOpen, 0);
        b.publish(Health::Unhealthy, BreakerView::Closed, 0);
        let ranked = Ranked::rank(&[a, b]);
        let probe = pick(&ranked, &|_| true, &[]).unwrap();
        assert_eq!(probe.target().slug(), "a");
        assert!(probe.is_probe());
        let next = pick(&ranked, &|_| true, &[]).unwrap();
        assert_eq!(next.target().slug(), "b");
    }
}
