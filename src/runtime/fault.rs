//! Fault injection for tests: the fail point `stage`, which every stage worker evaluates once per
//! chunk before it computes. It exists only with the `fail-points` feature; the default build has
//! no hook (the target grammar below is also compiled for its unit tests).
//!
//! `FAILPOINTS='stage=return(TARGET)'` makes the evaluation that TARGET names panic, as a kernel
//! would: the worker catches it, reports it, and the run exits 1 naming the stage.
//!
//! | TARGET | fails |
//! | --- | --- |
//! | `head` | every chunk of stage `head` |
//! | `head@3` | chunk 3 (counted from 0 in input order) in stage `head` |
//! | `head@3:5` | an evaluation of chunk 3 in `head` that computes the chunk's row 5: one record |
//!
//! A stage computes whole chunks today, so `head@3:5` fails like `head@3` when chunk 3 has a row 5;
//! once a failed chunk is re-run record by record, only the run of that record fails.
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
}

/// The evaluation of the fail point `stage` at `site`: the failure to inject, if any.
#[cfg(feature = "fail-points")]
pub(super) fn injected(site: &FaultSite) -> Option<String> {
    fail::fail_point!("stage", |target: Option<String>| site
        .failure(target.as_deref()));
    None
}

/// What a `return(TARGET)` argument names.
#[derive(Debug, PartialEq)]
struct FaultTarget<'a> {
    stage: &'a str,
    chunk: Option<ChunkId>,
    row: Option<usize>,
}

impl<'a> FaultTarget<'a> {
    fn parse(text: &'a str) -> Result<FaultTarget<'a>, String> {
        let bad =
            || format!("fail point `stage`: `{text}` is not STAGE, STAGE@CHUNK or STAGE@CHUNK:ROW");
        let Some((stage, place)) = text.rsplit_once('@') else {
            return Ok(FaultTarget {
                stage: text,
                chunk: None,
                row: None,
            });
        };
        let (chunk, row) = match place.split_once(':') {
            Some((chunk, row)) => (chunk, Some(row.parse().map_err(|_| bad())?)),
            None => (place, None),
        };
        Ok(FaultTarget {
            stage,
            chunk: Some(chunk.parse().map_err(|_| bad())?),
            row,
        })
    }
}

impl FaultSite<'_> {
    /// The failure message when `target` names this site. A missing or malformed target is a
    /// mistake in the test: it fails every evaluation, saying so.
    fn failure(&self, target: Option<&str>) -> Option<String> {
        let Some(text) = target else {
            return Some(
                "fail point `stage`: `return` needs a target, e.g. return(head)".to_string(),
            );
        };
        let target = match FaultTarget::parse(text) {
            Ok(t) => t,
            Err(e) => return Some(e),
        };
        let hit = target.stage == self.stage
            && target.chunk.is_none_or(|c| c == self.chunk)
            && target.row.is_none_or(|r| self.rows.contains(&r));
        hit.then(|| {
            format!(
                "injected fault in chunk {} rows {:?} (fail point stage=return({text}))",
                self.chunk, self.rows
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(stage: &str, chunk: ChunkId, rows: Range<usize>) -> FaultSite<'_> {
        FaultSite { stage, chunk, rows }
    }

    #[test]
    fn targets_parse_a_stage_a_chunk_and_a_row() {
        assert_eq!(
            FaultTarget::parse("head@3:5"),
            Ok(FaultTarget {
                stage: "head",
                chunk: Some(3),
                row: Some(5)
            })
        );
        assert_eq!(FaultTarget::parse("head@3").unwrap().row, None);
        assert_eq!(FaultTarget::parse("head").unwrap().chunk, None);
        assert!(FaultTarget::parse("head@x").is_err());
        assert!(FaultTarget::parse("head@3:").is_err());
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
    fn a_mistaken_target_fails_loudly_rather_than_never() {
        let head = site("head", 0, 0..1);
        assert!(head.failure(None).unwrap().contains("needs a target"));
        assert!(head
            .failure(Some("head@one"))
            .unwrap()
            .contains("is not STAGE"));
    }
}
