//! Fault injection for tests: the fail point `stage`, which a stage worker evaluates each time it
//! is about to compute records (a whole chunk, or part of one while it isolates a failure). It
//! exists only with the `fail-points` feature; the default build has no hook (the target grammar
//! below is also compiled for its unit tests).
//!
//! `FAILPOINTS='stage=return(TARGETS)'` makes the evaluations that TARGETS name panic, as a
//! kernel would: the worker catches it, restarts, and re-runs the chunk to find the records that
//! fail (see [`super::supervise`]). TARGETS is one or more of these, separated by commas:
//!
//! | TARGET | fails |
//! | --- | --- |
//! | `head` | every evaluation in stage `head`: every record fails |
//! | `head@3` | chunk 3 (counted from 0 in input order) in stage `head`: every record of it |
//! | `head@3:5` | an evaluation of chunk 3 in `head` that computes the chunk's row 5: one record |
//! | `head#137` | an evaluation in `head` that computes the record of input line 137 |
//! | `head>16` | an evaluation in `head` of more than 16 records: a failure that depends on the chunk's size, not on any one record |
//!
//! The fail crate's own actions compose with these: `stage=1*return(head)` fails once,
//! `stage=panic` fails whichever stage evaluates the point first.

use std::ops::Range;

use super::ChunkId;

/// What a stage worker is about to compute when it evaluates the fail point.
#[derive(Debug, Clone)]
pub(super) struct FaultSite<'a> {
    pub stage: &'a str,
    pub chunk: ChunkId,
    /// The rows of the chunk this evaluation computes.
    pub rows: Range<usize>,
    /// The input lines of those rows' records.
    pub lines: &'a [u64],
    /// Rows among them that hold zeros in place of a record this stage already found failing:
    /// they are not computed, so they do not fail again.
    pub zeroed: &'a [usize],
}

/// The evaluation of the fail point `stage` at `site`: the failure to inject, if any.
#[cfg(feature = "fail-points")]
pub(super) fn injected(site: &FaultSite) -> Option<String> {
    fail::fail_point!("stage", |target: Option<String>| site
        .failure(target.as_deref()));
    None
}

/// Where in a stage a `return(TARGET)` argument aims.
#[derive(Debug, PartialEq)]
enum Place {
    Everywhere,
    Chunk(ChunkId),
    Row(ChunkId, usize),
    Line(u64),
    MoreThan(usize),
}

/// What one `return(TARGET)` argument names.
#[derive(Debug, PartialEq)]
struct FaultTarget<'a> {
    stage: &'a str,
    place: Place,
}

impl<'a> FaultTarget<'a> {
    fn parse(text: &'a str) -> Result<FaultTarget<'a>, String> {
        let bad = || {
            format!(
                "fail point `stage`: `{text}` is not STAGE, STAGE@CHUNK, STAGE@CHUNK:ROW, STAGE#LINE or STAGE>RECORDS"
            )
        };
        if let Some((stage, records)) = text.rsplit_once('>') {
            return Ok(FaultTarget {
                stage,
                place: Place::MoreThan(records.parse().map_err(|_| bad())?),
            });
        }
        if let Some((stage, line)) = text.rsplit_once('#') {
            return Ok(FaultTarget {
                stage,
                place: Place::Line(line.parse().map_err(|_| bad())?),
            });
        }
        let Some((stage, place)) = text.rsplit_once('@') else {
            return Ok(FaultTarget {
                stage: text,
                place: Place::Everywhere,
            });
        };
        let place = match place.split_once(':') {
            Some((chunk, row)) => Place::Row(
                chunk.parse().map_err(|_| bad())?,
                row.parse().map_err(|_| bad())?,
            ),
            None => Place::Chunk(place.parse().map_err(|_| bad())?),
        };
        Ok(FaultTarget { stage, place })
    }

    fn hits(&self, site: &FaultSite) -> bool {
        let computes = |row: usize| site.rows.contains(&row) && !site.zeroed.contains(&row);
        self.stage == site.stage
            && match self.place {
                Place::Everywhere => true,
                Place::Chunk(c) => c == site.chunk,
                Place::Row(c, r) => c == site.chunk && computes(r),
                Place::Line(l) => site
                    .lines
                    .iter()
                    .position(|x| *x == l)
                    .is_some_and(|i| computes(site.rows.start + i)),
                Place::MoreThan(n) => site.rows.len() > n,
            }
    }
}

impl FaultSite<'_> {
    /// The failure message when `targets` name this site. A missing or malformed target is a
    /// mistake in the test: it fails every evaluation, saying so.
    fn failure(&self, targets: Option<&str>) -> Option<String> {
        let Some(text) = targets else {
            return Some(
                "fail point `stage`: `return` needs a target, e.g. return(head)".to_string(),
            );
        };
        for target in text.split(',') {
            match FaultTarget::parse(target.trim()) {
                Ok(t) if t.hits(self) => {
                    return Some(format!(
                        "injected fault in chunk {} rows {:?} (fail point stage=return({target}))",
                        self.chunk, self.rows
                    ))
                }
                Ok(_) => {}
                Err(e) => return Some(e),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line numbers of a chunk's rows in these tests: row r of chunk c is line 100 c + r + 1.
    const LINES: [u64; 400] = {
        let mut l = [0; 400];
        let mut i = 0;
        while i < 400 {
            l[i] = i as u64 + 1;
            i += 1;
        }
        l
    };

    fn site(stage: &str, chunk: ChunkId, rows: Range<usize>) -> FaultSite<'_> {
        let first = chunk as usize * 100;
        FaultSite {
            stage,
            chunk,
            lines: &LINES[first + rows.start..first + rows.end],
            rows,
            zeroed: &[],
        }
    }

    #[test]
    fn targets_parse_a_stage_a_chunk_and_a_row() {
        assert_eq!(
            FaultTarget::parse("head@3:5"),
            Ok(FaultTarget {
                stage: "head",
                place: Place::Row(3, 5)
            })
        );
        assert_eq!(FaultTarget::parse("head@3").unwrap().place, Place::Chunk(3));
        assert_eq!(FaultTarget::parse("head").unwrap().place, Place::Everywhere);
        assert_eq!(
            FaultTarget::parse("a.b#137").unwrap().place,
            Place::Line(137)
        );
        assert!(FaultTarget::parse("head@x").is_err());
        assert!(FaultTarget::parse("head@3:").is_err());
        assert!(FaultTarget::parse("head#").is_err());
        assert_eq!(
            FaultTarget::parse("head>16").unwrap().place,
            Place::MoreThan(16)
        );
        assert!(FaultTarget::parse("head>").is_err());
    }

    #[test]
    fn a_target_fails_only_the_stage_chunk_and_row_it_names() {
        let head = site("head", 3, 0..32);
        assert!(head.failure(Some("head")).is_some());
        assert!(site("body", 3, 0..32).failure(Some("head")).is_none());
        assert!(head.failure(Some("head@3")).is_some());
        assert!(head.failure(Some("head@4")).is_none());
        assert!(head.failure(Some("head@3:31")).is_some());
        assert!(head.failure(Some("head@3:32")).is_none(), "no row 32");
        // Record by record, only the run of the chosen row fails.
        let failing: Vec<usize> = (0..32)
            .filter(|&r| {
                site("head", 3, r..r + 1)
                    .failure(Some("head@3:5"))
                    .is_some()
            })
            .collect();
        assert_eq!(failing, [5]);
    }

    #[test]
    fn a_line_target_fails_only_evaluations_that_compute_that_line() {
        // Chunk 1 holds lines 101..=132 in rows 0..32.
        assert!(site("head", 1, 0..32).failure(Some("head#105")).is_some());
        assert!(site("head", 1, 0..4).failure(Some("head#105")).is_none());
        assert!(site("head", 1, 4..5).failure(Some("head#105")).is_some());
        assert!(site("head", 0, 0..32).failure(Some("head#105")).is_none());
        assert!(site("body", 1, 0..32).failure(Some("head#105")).is_none());
        // Once found, the record is zeroed in the chunk's final run: it does not fail again.
        let final_run = FaultSite {
            zeroed: &[4],
            ..site("head", 1, 0..32)
        };
        assert!(final_run.failure(Some("head#105")).is_none());
        assert!(final_run.failure(Some("head@1:4")).is_none());
        assert!(final_run.failure(Some("head#106")).is_some());
    }

    #[test]
    fn a_size_target_fails_only_evaluations_of_more_records() {
        assert!(site("head", 0, 0..17).failure(Some("head>16")).is_some());
        assert!(site("head", 0, 0..16).failure(Some("head>16")).is_none());
        assert!(site("head", 0, 16..32).failure(Some("head>16")).is_none());
    }

    #[test]
    fn several_targets_fail_wherever_any_of_them_hits() {
        let targets = Some("body#7, head#105,head@3");
        assert!(site("body", 0, 6..7).failure(targets).is_some());
        assert!(site("head", 0, 6..7).failure(targets).is_none());
        assert!(site("head", 1, 4..5).failure(targets).is_some());
        assert!(site("head", 3, 0..1).failure(targets).is_some());
        assert!(site("head", 2, 0..32).failure(targets).is_none());
        assert!(site("head", 2, 0..1)
            .failure(Some("head#1,head@"))
            .unwrap()
            .contains("is not STAGE"));
    }

    #[test]
    fn a_mistaken_target_fails_loudly_rather_than_never() {
        let head = site("head", 0, 0..1);
        assert!(head.failure(None).unwrap().contains("needs a target"));
        assert!(head
            .failure(Some("head@one"))
            .unwrap()
            .contains("is not STAGE"));
    }
}
