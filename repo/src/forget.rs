//! Retention: which snapshots a keep policy keeps, and why (restic-style rules).
//!
//! Snapshots are grouped by (VM, host); each group is judged on its own, newest first.
//! `keep_last` keeps the newest N; `keep_within` keeps every snapshot taken within that
//! duration of the group's newest; each calendar rule (hourly, daily, weekly, monthly,
//! yearly) keeps the newest snapshot of each of the N most recent periods that have one.
//! Periods are UTC; weeks start on Monday. A snapshot kept by several rules lists every
//! reason. Unless asked, the newest snapshot of a VM is never removed, whatever the rules
//! say (a VM with no snapshot left is almost always a mistake).

use crate::repository::NamedSnapshot;
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

/// A keep policy; zero means "rule not used".
#[derive(Debug, Clone, Default)]
pub struct KeepPolicy {
    /// Keep the newest N.
    pub last: u32,
    /// Keep the newest of each of the last N hours with snapshots.
    pub hourly: u32,
    /// Days.
    pub daily: u32,
    /// Weeks (Monday to Sunday).
    pub weekly: u32,
    /// Calendar months.
    pub monthly: u32,
    /// Calendar years.
    pub yearly: u32,
    /// Keep everything within this long of the group's newest snapshot.
    pub within: Option<Duration>,
}

impl KeepPolicy {
    /// True when no rule is set (such a policy would remove everything).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
    }
}

/// One snapshot's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Snapshot id.
    pub id: String,
    /// Its time (RFC 3339).
    pub time: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Kept or to be removed.
    pub keep: bool,
    /// Why it is kept (empty when removed).
    pub reasons: Vec<String>,
}

/// The verdicts of one (VM, host) group, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct GroupVerdict {
    /// The VM.
    pub vm: String,
    /// The host that backed it up.
    pub host: String,
    /// Newest first.
    pub snapshots: Vec<Verdict>,
}

/// Which snapshots to consider.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this VM.
    pub vm: Option<String>,
    /// Only snapshots carrying all these tags.
    pub tags: Vec<String>,
    /// Allow removing every snapshot of a VM.
    pub allow_remove_all: bool,
}

fn secs(time: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(time).ok()?;
    Some(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64) - 1,
    })
}

/// (year, month 1..=12) of a day count since 1970-01-01 (proleptic Gregorian).
fn year_month(days: i64) -> (i64, i64) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// The period keys of a time: hour, day, week (Monday-based), month, year.
fn periods(t: i64) -> [i64; 5] {
    let days = t.div_euclid(86_400);
    let (y, m) = year_month(days);
    [
        t.div_euclid(3600),
        days,
        // 1970-01-01 was a Thursday; +3 makes Monday the first day of a week.
        (days + 3).div_euclid(7),
        y * 12 + (m - 1),
        y,
    ]
}

const PERIOD_NAMES: [&str; 5] = ["hourly", "daily", "weekly", "monthly", "yearly"];

/// Judges every selected snapshot. `snaps` may be in any order; snapshots outside the
/// selection are not returned (and never removed), but they count as "another snapshot
/// of the VM" for the last-snapshot rule.
pub fn judge(snaps: &[NamedSnapshot], policy: &KeepPolicy, sel: &Selection) -> Vec<GroupVerdict> {
    let selected = |s: &crate::format::snapshot::Snapshot| {
        sel.vm.as_deref().is_none_or(|v| s.vm == v) && sel.tags.iter().all(|t| s.tags.contains(t))
    };
    let mut groups: std::collections::BTreeMap<(String, String), Vec<&NamedSnapshot>> =
        Default::default();
    for ns in snaps.iter().filter(|(_, s)| selected(s)) {
        groups
            .entry((ns.1.vm.clone(), ns.1.host.clone()))
            .or_default()
            .push(ns);
    }
    let mut out = Vec::new();
    for ((vm, host), mut members) in groups {
        members.sort_by(|a, b| b.1.time.cmp(&a.1.time).then_with(|| b.0.cmp(&a.0)));
        let times: Vec<Option<i64>> = members.iter().map(|(_, s)| secs(&s.time)).collect();
        let newest = times.iter().flatten().copied().max();
        let mut verdicts: Vec<Verdict> = members
            .iter()
            .map(|(id, s)| Verdict {
                id: id.clone(),
                time: s.time.clone(),
                tags: s.tags.clone(),
                keep: false,
                reasons: Vec::new(),
            })
            .collect();
        for (i, v) in verdicts.iter_mut().enumerate() {
            if (i as u32) < policy.last {
                v.reasons.push(format!("last {}", policy.last));
            }
            if let (Some(within), Some(newest), Some(t)) = (policy.within, newest, times[i]) {
                if newest - t <= within.as_secs() as i64 {
                    v.reasons
                        .push(format!("within {}", humantime::format_duration(within)));
                }
            }
        }
        let counts = [
            policy.hourly,
            policy.daily,
            policy.weekly,
            policy.monthly,
            policy.yearly,
        ];
        for (rule, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let mut last_key = None;
            let mut kept = 0u32;
            for (i, v) in verdicts.iter_mut().enumerate() {
                let Some(t) = times[i] else { continue };
                let key = periods(t)[rule];
                if last_key != Some(key) && kept < n {
                    v.reasons.push(format!("{} snapshot", PERIOD_NAMES[rule]));
                    kept += 1;
                }
                last_key = Some(key);
            }
        }
        for v in &mut verdicts {
            v.keep = !v.reasons.is_empty();
        }
        out.push(GroupVerdict {
            vm,
            host,
            snapshots: verdicts,
        });
    }
    if !sel.allow_remove_all {
        // A VM keeps at least its newest snapshot, counting snapshots outside the
        // selection too.
        let vms: std::collections::BTreeSet<String> = out.iter().map(|g| g.vm.clone()).collect();
        for vm in vms {
            let survives_elsewhere = snaps.iter().any(|(id, s)| {
                s.vm == vm
                    && !out
                        .iter()
                        .flat_map(|g| &g.snapshots)
                        .any(|v| &v.id == id && !v.keep)
            });
            if survives_elsewhere {
                continue;
            }
            let newest = out
                .iter_mut()
                .filter(|g| g.vm == vm)
                .flat_map(|g| g.snapshots.iter_mut())
                .max_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
            if let Some(v) = newest {
                v.keep = true;
                v.reasons
                    .push("newest snapshot of the VM (--allow-remove-all removes it)".into());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::Snapshot;

    fn snap(vm: &str, host: &str, time: &str, tags: &[&str]) -> Snapshot {
        let mut s: Snapshot = serde_json::from_value(serde_json::json!({
            "version": 1, "vm": vm, "host": host, "time": time, "tags": tags,
            "parent": null, "program": "test", "disks": []
        }))
        .expect("a minimal snapshot");
        s.tags = tags.iter().map(|t| t.to_string()).collect();
        s
    }

    fn named(n: usize, vm: &str, time: &str) -> NamedSnapshot {
        (format!("{n:064x}"), snap(vm, "h", time, &[]))
    }

    fn kept(g: &GroupVerdict) -> Vec<String> {
        g.snapshots
            .iter()
            .filter(|v| v.keep)
            .map(|v| v.time[..13].to_string())
            .collect()
    }

    #[test]
    fn calendar_periods() {
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(31), (1970, 2));
        // 2024-02-29 is day 19782.
        assert_eq!(year_month(19_782), (2024, 2));
        assert_eq!(year_month(19_783), (2024, 3));
        // 2026-11-23 (a Monday) and 2026-11-22 (a Sunday) are in different weeks.
        let mon = secs("2026-11-23T00:00:00Z").unwrap();
        let sun = secs("2026-11-22T23:59:59Z").unwrap();
        assert_ne!(periods(mon)[2], periods(sun)[2]);
        assert_eq!(periods(mon)[2], periods(mon + 6 * 86_400)[2]);
    }

    #[test]
    fn rules_keep_the_newest_of_each_period() {
        // Hourly snapshots over three days.
        let mut snaps = Vec::new();
        for d in 20..23 {
            for h in 0..24 {
                snaps.push(named(
                    snaps.len(),
                    "web",
                    &format!("2026-11-{d:02}T{h:02}:30:00Z"),
                ));
            }
        }
        let p = KeepPolicy {
            last: 2,
            daily: 2,
            ..Default::default()
        };
        let g = judge(&snaps, &p, &Selection::default());
        assert_eq!(g.len(), 1);
        assert_eq!(
            kept(&g[0]),
            vec!["2026-11-22T23", "2026-11-22T22", "2026-11-21T23"]
        );
        let first = &g[0].snapshots[0];
        assert_eq!(first.reasons, vec!["last 2", "daily snapshot"]);

        let p = KeepPolicy {
            within: Some(Duration::from_secs(3 * 3600)),
            ..Default::default()
        };
        let g = judge(&snaps, &p, &Selection::default());
        assert_eq!(kept(&g[0]).len(), 4, "22:30, 21:30, 20:30 and 19:30");
    }

    #[test]
    fn groups_are_per_vm_and_host_and_selection_filters() {
        let snaps = vec![
            named(1, "a", "2026-11-01T00:00:00Z"),
            named(2, "a", "2026-11-02T00:00:00Z"),
            named(3, "b", "2026-11-01T00:00:00Z"),
            (
                format!("{:064x}", 4),
                snap("a", "other-host", "2026-11-03T00:00:00Z", &["x"]),
            ),
        ];
        let p = KeepPolicy {
            last: 1,
            ..Default::default()
        };
        let g = judge(&snaps, &p, &Selection::default());
        assert_eq!(g.len(), 3);
        let sel = Selection {
            vm: Some("a".into()),
            tags: vec!["x".into()],
            ..Default::default()
        };
        let g = judge(&snaps, &p, &sel);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].host, "other-host");
    }

    #[test]
    fn the_last_snapshot_of_a_vm_stays_unless_asked() {
        let snaps = vec![
            (
                format!("{:064x}", 1),
                snap("a", "h", "2026-11-01T00:00:00Z", &["old"]),
            ),
            (
                format!("{:064x}", 2),
                snap("a", "h", "2026-11-02T00:00:00Z", &["old"]),
            ),
        ];
        // One rule keeps the newest; an empty policy would keep nothing, but the guard
        // keeps the VM's newest snapshot unless removing everything is allowed.
        let p = KeepPolicy {
            hourly: 1,
            ..Default::default()
        };
        let g = judge(&snaps, &p, &Selection::default());
        assert_eq!(kept(&g[0]), vec!["2026-11-02T00"]);
        let none = KeepPolicy::default();
        let g = judge(&snaps, &none, &Selection::default());
        assert_eq!(kept(&g[0]), vec!["2026-11-02T00"], "the newest stays");
        assert!(g[0].snapshots[0].reasons[0].contains("newest snapshot"));
        let g = judge(
            &snaps,
            &none,
            &Selection {
                allow_remove_all: true,
                ..Default::default()
            },
        );
        assert!(kept(&g[0]).is_empty());
    }
}
