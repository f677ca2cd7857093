//! When work is due: how many VUs should run at a moment (closed model) and
//! when each arrival is due (open model).
//!
//! Both are pure functions of the elapsed time: no clock, no IO. The runner
//! passes in `Instant::elapsed()`, tests pass virtual times, so the counts
//! they assert do not depend on how fast the machine is.

use std::time::Duration;

/// Longest total length of a run's stages.
pub const RUN_DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most stages one `--stage` list may have.
pub const STAGES_MAX: usize = 100;

/// One stage: ramp linearly to `target` over `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    /// VUs (closed model) or arrivals per second (open model) at the end.
    pub target: f64,
}

/// Parses a duration such as `30s`, `500ms`, `1m30s`, `2h`, `250us`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: write a number and a unit (h, m, s, ms, us), e.g. 30s, 1m30s, 500ms"
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > RUN_DURATION_MAX.as_secs_f64() {
        return Err(format!(
            "`{text}` is longer than the longest run ({} h)",
            RUN_DURATION_MAX.as_secs() / 3600
        ));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parses `--stage` lists: `DURATION:TARGET[,DURATION:TARGET...]`, e.g.
/// `10s:50,30s:50,10s:0`. An error names the part that is wrong.
pub fn parse_stages(text: &str) -> Result<Vec<Stage>, String> {
    let mut stages = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (duration, target) = part.split_once(':').ok_or_else(|| {
            format!("stage `{part}` in `{text}` has no `:`: write DURATION:TARGET, e.g. 30s:50")
        })?;
        let duration =
            parse_duration(duration).map_err(|e| format!("stage `{part}` in `{text}`: {e}"))?;
        let target: f64 = target
            .parse()
            .ok()
            .filter(|t: &f64| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| {
                format!("stage `{part}` in `{text}`: target `{target}` is not a number ≥ 0")
            })?;
        stages.push(Stage { duration, target });
    }
    if stages.len() > STAGES_MAX {
        return Err(format!(
            "{} stages is more than STAGES_MAX ({STAGES_MAX})",
            stages.len()
        ));
    }
    let total: Duration = stages.iter().map(|s| s.duration).sum();
    if total > RUN_DURATION_MAX {
        return Err(format!(
            "the stages last longer than the longest run ({} h)",
            RUN_DURATION_MAX.as_secs() / 3600
        ));
    }
    Ok(stages)
}

/// A piecewise-linear ramp: `start` at time zero, then each stage in turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp {
    pub start: f64,
    pub stages: Vec<Stage>,
}

impl Ramp {
    /// A constant level for `duration`.
    pub fn constant(level: f64, duration: Duration) -> Ramp {
        Ramp {
            start: level,
            stages: vec![Stage {
                duration,
                target: level,
            }],
        }
    }

    /// When the last stage ends.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// The highest level the ramp reaches.
    pub fn peak(&self) -> f64 {
        self.stages
            .iter()
            .map(|s| s.target)
            .fold(self.start, f64::max)
    }

    /// The level at `t` (the last target after the end).
    pub fn level_at(&self, t: Duration) -> f64 {
        let mut from = self.start;
        let mut stage_start = Duration::ZERO;
        for stage in &self.stages {
            let end = stage_start + stage.duration;
            if t < end {
                let x = (t - stage_start).as_secs_f64() / stage.duration.as_secs_f64();
                return from + (stage.target - from) * x;
            }
            from = stage.target;
            stage_start = end;
        }
        from
    }
}

/// Closed model: how many VUs should be running at a moment. Ramps round
/// down, so a VU starts once the line has fully reached it.
#[derive(Debug, Clone, PartialEq)]
pub struct VuSchedule {
    pub ramp: Ramp,
}

impl VuSchedule {
    /// VUs that should be active at `t`.
    pub fn vus_at(&self, t: Duration) -> u64 {
        // The small epsilon keeps 49.999999 (float error on a ramp's last
        // instant) from rounding to 49.
        (self.ramp.level_at(t) + 1e-9).floor() as u64
    }

    /// Most VUs at once.
    pub fn peak(&self) -> u64 {
        (self.ramp.peak() + 1e-9).floor() as u64
    }
}

/// Open model: arrivals at a rate that follows a ramp (per second). The
/// `n`th arrival (from 0) is due when the integral of the rate from time
/// zero reaches `n`, so a constant rate `r` gives arrivals at `0, 1/r, 2/r,
/// ...` and exactly `r × d` of them in `[0, d)`.
#[derive(Debug, Clone)]
pub struct ArrivalSchedule {
    ramp: Ramp,
    /// Index of the stage the next arrival falls in.
    stage: usize,
    /// Rate at the start of that stage.
    stage_from: f64,
    /// When that stage starts.
    stage_start: f64,
    /// Arrivals due before that stage (the integral up to its start).
    stage_area: f64,
    /// The next arrival's number.
    next: u64,
}

impl ArrivalSchedule {
    pub fn new(ramp: Ramp) -> ArrivalSchedule {
        let stage_from = ramp.start;
        ArrivalSchedule {
            ramp,
            stage: 0,
            stage_from,
            stage_start: 0.0,
            stage_area: 0.0,
            next: 0,
        }
    }

    /// When the run ends.
    pub fn total(&self) -> Duration {
        self.ramp.total()
    }

    /// The highest rate reached.
    pub fn peak_rate(&self) -> f64 {
        self.ramp.peak()
    }

    /// When the next arrival is due, or `None` once the run is over.
    pub fn next_arrival(&mut self) -> Option<Duration> {
        let n = self.next as f64;
        while let Some(stage) = self.ramp.stages.get(self.stage) {
            let d = stage.duration.as_secs_f64();
            let (r0, r1) = (self.stage_from, stage.target);
            let need = n - self.stage_area;
            // A(x) = r0 x + (r1 - r0) x² / (2d) = need, solved in the form
            // that stays exact when r1 == r0.
            let a = if d > 0.0 { (r1 - r0) / (2.0 * d) } else { 0.0 };
            let disc = r0 * r0 + 4.0 * a * need;
            let x = if need <= 0.0 {
                // Due at the stage's start, if the stage has arrivals at all.
                (r0 > 0.0 || r1 > 0.0).then_some(0.0)
            } else if disc < 0.0 || r0 + disc.sqrt() <= 0.0 {
                None
            } else {
                Some(2.0 * need / (r0 + disc.sqrt()))
            };
            match x {
                Some(x) if x < d => {
                    self.next += 1;
                    return Some(Duration::from_secs_f64(self.stage_start + x));
                }
                _ => {
                    self.stage_area += (r0 + r1) / 2.0 * d;
                    self.stage_start += d;
                    self.stage_from = r1;
                    self.stage += 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn durations_parse_and_errors_name_the_text() {
        assert_eq!(parse_duration("30s"), Ok(secs(30.0)));
        assert_eq!(parse_duration("1m30s"), Ok(secs(90.0)));
        assert_eq!(parse_duration("500ms"), Ok(secs(0.5)));
        assert_eq!(parse_duration("2h"), Ok(secs(7200.0)));
        assert_eq!(parse_duration("1.5s"), Ok(secs(1.5)));
        for bad in ["", "10", "10x", "s", "-1s", "1s2"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        assert!(parse_duration("1000h").is_err());
    }

    #[test]
    fn stages_parse_and_name_the_bad_part() {
        let stages = parse_stages("10s:50,30s:50,10s:0").expect("parses");
        assert_eq!(stages.len(), 3);
        assert_eq!(stages[1].duration, secs(30.0));
        assert_eq!(stages[2].target, 0.0);
        let err = parse_stages("10s:50,10x:5").expect_err("bad unit");
        assert!(err.contains("`10x:5`") && err.contains("`10x`"), "{err}");
        let err = parse_stages("10s").expect_err("no colon");
        assert!(
            err.contains("`10s`") && err.contains("DURATION:TARGET"),
            "{err}"
        );
        let err = parse_stages("10s:-3").expect_err("negative");
        assert!(err.contains("`-3`"), "{err}");
    }

    #[test]
    fn vu_ramp_over_a_virtual_clock() {
        let schedule = VuSchedule {
            ramp: Ramp {
                start: 0.0,
                stages: parse_stages("10s:50,30s:50,10s:0").expect("parses"),
            },
        };
        assert_eq!(schedule.ramp.total(), secs(50.0));
        assert_eq!(schedule.peak(), 50);
        assert_eq!(schedule.vus_at(secs(0.0)), 0);
        assert_eq!(schedule.vus_at(secs(1.0)), 5);
        assert_eq!(schedule.vus_at(secs(5.0)), 25);
        assert_eq!(schedule.vus_at(secs(10.0)), 50);
        assert_eq!(schedule.vus_at(secs(39.9)), 50);
        assert_eq!(schedule.vus_at(secs(45.0)), 25);
        assert_eq!(schedule.vus_at(secs(60.0)), 0);
        // Sampled every 10 ms, the ramp up passes through every count once,
        // in order.
        let mut seen = Vec::new();
        for ms in (0..10_000).step_by(10) {
            let v = schedule.vus_at(Duration::from_millis(ms));
            if seen.last() != Some(&v) {
                seen.push(v);
            }
        }
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
    }

    fn count(schedule: &mut ArrivalSchedule) -> Vec<Duration> {
        std::iter::from_fn(|| schedule.next_arrival()).collect()
    }

    #[test]
    fn constant_arrival_rate_is_exact() {
        let mut schedule = ArrivalSchedule::new(Ramp::constant(2000.0, secs(30.0)));
        let arrivals = count(&mut schedule);
        assert_eq!(arrivals.len(), 60_000);
        assert_eq!(arrivals[0], Duration::ZERO);
        assert_eq!(arrivals[1], secs(0.0005));
        assert!(arrivals.windows(2).all(|w| w[0] < w[1]), "strictly later");
        // Each virtual second holds exactly 2000 arrivals.
        for s in 0..30u32 {
            let n = arrivals
                .iter()
                .filter(|t| t.as_secs_f64().floor() as u32 == s)
                .count();
            assert!((1999..=2001).contains(&n), "second {s}: {n}");
        }
        assert_eq!(schedule.next_arrival(), None, "stays over");
    }

    #[test]
    fn ramping_arrival_rate_follows_the_area() {
        // 0 → 100/s over 10 s (area 500), 100/s for 10 s (1000), → 0 over 10 s (500).
        let mut schedule = ArrivalSchedule::new(Ramp {
            start: 0.0,
            stages: parse_stages("10s:100,10s:100,10s:0").expect("parses"),
        });
        let arrivals = count(&mut schedule);
        let in_range = |a: f64, b: f64| {
            arrivals
                .iter()
                .filter(|t| t.as_secs_f64() >= a && t.as_secs_f64() < b)
                .count()
        };
        assert_eq!(in_range(0.0, 10.0), 500);
        assert_eq!(in_range(10.0, 20.0), 1000);
        assert!((499..=500).contains(&in_range(20.0, 30.0)));
        // Quadratic growth on the way up: a quarter of the first ramp's
        // arrivals come in its first half.
        assert_eq!(in_range(0.0, 5.0), 125);
        assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn zero_rate_stage_has_no_arrivals_and_ends() {
        let mut schedule = ArrivalSchedule::new(Ramp {
            start: 0.0,
            stages: parse_stages("5s:0,1s:10").expect("parses"),
        });
        let arrivals = count(&mut schedule);
        assert_eq!(arrivals.len(), 5);
        assert!(arrivals.iter().all(|t| *t >= secs(5.0)));
    }
}
