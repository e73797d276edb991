//! Requests, tokens and rate-limit rejections per minute, for the dashboard's
//! charts. Counting is a short in-memory lock on the request path; with Redis,
//! a background task adds the counts into `oc:{stats}:<unix minute>` (a hash
//! with fields `r`, `t`, `x`) every few seconds, so the charts sum every
//! replica without a Redis round trip per request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::store::SharedConnection;

/// How often counts are added into Redis.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How long a minute's counters are kept.
const KEEP_MINUTES: i64 = 120;
/// How many minutes the charts show.
pub const CHART_MINUTES: i64 = 60;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub tokens: u64,
    pub rejections: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.tokens += other.tokens;
        self.rejections += other.rejections;
    }
}

#[derive(Default)]
struct Minutes {
    /// This replica's counts (what the charts show without Redis).
    local: BTreeMap<i64, Counts>,
    /// Counts not yet added into Redis.
    pending: BTreeMap<i64, Counts>,
}

#[derive(Default)]
pub struct Traffic {
    minutes: Mutex<Minutes>,
    shared: OnceLock<SharedConnection>,
}

fn current_minute() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(60)
}

/// One hash per minute, all under the hash tag `{stats}`: the flush and the chart's read are
/// pipelines over many minutes, which a Redis Cluster serves only within one slot.
fn stats_key(minute: i64) -> String {
    format!("oc:{{stats}}:{minute}")
}

impl Traffic {
    fn record(&self, counts: Counts) {
        let minute = current_minute();
        let Ok(mut minutes) = self.minutes.lock() else {
            return;
        };
        minutes.local.entry(minute).or_default().add(counts);
        if minutes.local.len() as i64 > KEEP_MINUTES {
            let oldest = minute - KEEP_MINUTES;
            minutes.local.retain(|m, _| *m > oldest);
        }
        if self.shared.get().is_some() {
            minutes.pending.entry(minute).or_default().add(counts);
        }
    }

    pub fn admitted(&self) {
        self.record(Counts {
            requests: 1,
            ..Counts::default()
        });
    }

    pub fn rejected(&self) {
        self.record(Counts {
            rejections: 1,
            ..Counts::default()
        });
    }

    pub fn tokens(&self, tokens: u64) {
        if tokens > 0 {
            self.record(Counts {
                tokens,
                ..Counts::default()
            });
        }
    }

    /// Sums the counts of every replica through Redis from now on.
    pub fn share_through(self: &Arc<Self>, conn: SharedConnection) {
        if self.shared.set(conn).is_err() {
            return;
        }
        let traffic = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tick.tick().await;
                let Some(traffic) = traffic.upgrade() else {
                    return;
                };
                traffic.flush().await;
            }
        });
    }

    async fn flush(&self) {
        let Some(conn) = self.shared.get() else {
            return;
        };
        let pending = match self.minutes.lock() {
            Ok(mut minutes) => std::mem::take(&mut minutes.pending),
            Err(_) => return,
        };
        if pending.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (minute, counts) in &pending {
            let key = stats_key(*minute);
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg("r")
                .arg(counts.requests)
                .ignore();
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg("t")
                .arg(counts.tokens)
                .ignore();
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg("x")
                .arg(counts.rejections)
                .ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(KEEP_MINUTES * 60).ignore();
        }
        let mut conn = conn.clone();
        if let Err(err) = pipe.query_async::<()>(&mut conn).await {
            tracing::debug!(error = %err, "could not add traffic counts into Redis; will retry");
            if let Ok(mut minutes) = self.minutes.lock() {
                for (minute, counts) in pending {
                    minutes.pending.entry(minute).or_default().add(counts);
                }
            }
        }
    }

    /// One entry per minute of the last [`CHART_MINUTES`], oldest first: `(unix minute, counts)`.
    pub async fn last_hour(&self) -> Vec<(i64, Counts)> {
        let now = current_minute();
        let range: Vec<i64> = (now - CHART_MINUTES + 1..=now).collect();
        let (local, pending) = match self.minutes.lock() {
            Ok(minutes) => (minutes.local.clone(), minutes.pending.clone()),
            Err(_) => Default::default(),
        };
        if let Some(conn) = self.shared.get() {
            let mut pipe = redis::pipe();
            for minute in &range {
                pipe.cmd("HMGET")
                    .arg(stats_key(*minute))
                    .arg("r")
                    .arg("t")
                    .arg("x");
            }
            let mut conn = conn.clone();
            match pipe
                .query_async::<Vec<(Option<u64>, Option<u64>, Option<u64>)>>(&mut conn)
                .await
            {
                Ok(rows) => {
                    return range
                        .iter()
                        .zip(rows)
                        .map(|(minute, (r, t, x))| {
                            let mut counts = Counts {
                                requests: r.unwrap_or(0),
                                tokens: t.unwrap_or(0),
                                rejections: x.unwrap_or(0),
                            };
                            // This replica's counts not flushed yet.
                            counts.add(pending.get(minute).copied().unwrap_or_default());
                            (*minute, counts)
                        })
                        .collect();
                }
                Err(err) => {
                    tracing::debug!(error = %err, "could not read traffic counts; showing this replica's");
                }
            }
        }
        range
            .iter()
            .map(|minute| (*minute, local.get(minute).copied().unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_land_in_the_current_minute_of_a_full_hour() {
        let traffic = Traffic::default();
        traffic.admitted();
        traffic.admitted();
        traffic.rejected();
        traffic.tokens(42);
        let hour = traffic.last_hour().await;
        assert_eq!(hour.len() as i64, CHART_MINUTES);
        let last = hour.last().unwrap().1;
        assert_eq!(
            last,
            Counts {
                requests: 2,
                tokens: 42,
                rejections: 1
            }
        );
    }
}
