//! The version base of a group ([`VersionBase`]): how a group's versions
//! follow its LSNs and stay above every version it imported (resharding).
//! Pure: no IO, no locks; the state core keeps one behind a lock.

use trellis_types::{Lsn, Version};

/// Most change points of the version base kept ([`VersionBase`]); past it
/// the oldest is dropped, which only makes readers of the oldest imported
/// versions wait for a later LSN than they need.
pub const VERSION_POINTS_MAX: usize = 1024;

/// The version base of a group: `version(lsn) = lsn + offset`, where the
/// offset starts at 0 (so versions are LSNs until a group imports data)
/// and an INGEST record at LSN `i` whose highest entry is `m` raises it to
/// at least `m - i`, effective at `i` itself. Versions therefore rise
/// strictly with the LSN and stay above everything imported: a key moved
/// here is never written again at a version a client read at the source.
///
/// Readers wait for durability by LSN, so a version is mapped back to the
/// smallest LSN whose version reaches it ([`VersionBase::lsn_of`]). The
/// points where the offset changed are kept (at most
/// [`VERSION_POINTS_MAX`]); dropping old ones maps old versions to a
/// *later* LSN (never an earlier one), so a reader may wait longer than it
/// must but never less.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionBase {
    /// `(lsn, offset)`: from `lsn` on (until the next point) the offset is
    /// `offset`. Ascending in both; never empty. The first point is the
    /// floor: versions below it map to its LSN.
    points: Vec<(Lsn, u64)>,
}

impl Default for VersionBase {
    fn default() -> Self {
        VersionBase {
            points: vec![(0, 0)],
        }
    }
}

impl VersionBase {
    /// The base from a snapshot's points; none: versions are LSNs.
    pub fn from_points(points: Vec<(Lsn, u64)>) -> Result<VersionBase, String> {
        if points.is_empty() {
            return Ok(VersionBase::default());
        }
        if points
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
        {
            return Err("version base points out of order".into());
        }
        Ok(VersionBase { points })
    }

    /// The change points, oldest first.
    pub fn points(&self) -> &[(Lsn, u64)] {
        &self.points
    }

    fn offset_at(&self, lsn: Lsn) -> u64 {
        self.points
            .iter()
            .rev()
            .find(|(l, _)| *l <= lsn)
            .unwrap_or(&self.points[0])
            .1
    }

    /// The version of the record at `lsn` (for LSNs at or above the oldest
    /// point kept, which every LSN still being assigned or answered is).
    pub fn version(&self, lsn: Lsn) -> Version {
        lsn + self.offset_at(lsn)
    }

    /// The offset now in force (for the next record).
    pub fn offset(&self) -> u64 {
        self.points.last().expect("never empty").1
    }

    /// The INGEST record at `lsn` imported versions up to `highest`: from
    /// `lsn` on, `version(lsn) >= highest`.
    pub fn raise(&mut self, lsn: Lsn, highest: Version) {
        let wanted = highest.saturating_sub(lsn);
        if wanted <= self.offset() {
            return;
        }
        let last = self.points.last_mut().expect("never empty");
        if last.0 == lsn {
            last.1 = wanted;
        } else {
            debug_assert!(last.0 < lsn, "the base is raised in LSN order");
            self.points.push((lsn, wanted));
        }
        if self.points.len() > VERSION_POINTS_MAX {
            self.points.remove(0);
        }
    }

    /// The smallest LSN whose version is at least `version`: once that LSN
    /// is durable, so is the entry written at `version` (or imported with
    /// it, by an earlier INGEST). Version 0 (absent) needs nothing.
    pub fn lsn_of(&self, version: Version) -> Lsn {
        if version == 0 {
            return 0;
        }
        for (i, (lsn, offset)) in self.points.iter().enumerate() {
            let candidate = (*lsn).max(version.saturating_sub(*offset));
            match self.points.get(i + 1) {
                Some((next, _)) if candidate >= *next => continue,
                _ => return candidate,
            }
        }
        unreachable!("the last point always answers")
    }

    /// Drops points no reader needs exactly any more: those before the last
    /// one at or below `lsn` (everything up to `lsn` is durable, so mapping
    /// its versions to a later LSN up to `lsn` costs no wait).
    pub fn prune_below(&mut self, lsn: Lsn) {
        let keep_from = self
            .points
            .iter()
            .rposition(|(l, _)| *l <= lsn)
            .unwrap_or(0);
        self.points.drain(..keep_from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_base_maps_versions_back_to_the_lsns_that_make_them_durable() {
        let mut base = VersionBase::default();
        assert_eq!((base.version(7), base.lsn_of(7), base.lsn_of(0)), (7, 7, 0));
        // An INGEST at LSN 10 imported versions up to 100: offset 90 from 10.
        base.raise(10, 100);
        assert_eq!(base.version(9), 9);
        assert_eq!(base.version(10), 100);
        assert_eq!(base.version(11), 101);
        assert_eq!(base.lsn_of(9), 9);
        // Versions 10..=100 were imported by LSN 10 (or are between): 10.
        assert_eq!(base.lsn_of(10), 10);
        assert_eq!(base.lsn_of(55), 10);
        assert_eq!(base.lsn_of(100), 10);
        assert_eq!(base.lsn_of(101), 11);
        // A lower import changes nothing; a higher one adds a point.
        base.raise(20, 50);
        assert_eq!(base.points().len(), 2);
        base.raise(30, 500);
        assert_eq!(base.version(29), 119);
        assert_eq!(base.version(30), 500);
        assert_eq!(base.lsn_of(119), 29);
        assert_eq!(base.lsn_of(120), 30, "in the gap: the import's LSN");
        assert_eq!(base.lsn_of(501), 31);
        // Pruning maps old versions to a later LSN, never an earlier one.
        let exact = base.clone();
        base.prune_below(25);
        assert_eq!(base.points(), &[(10, 90), (30, 470)]);
        for version in 1..600 {
            assert!(
                base.lsn_of(version) >= exact.lsn_of(version),
                "version {version}"
            );
            if exact.lsn_of(version) >= 10 {
                assert_eq!(base.lsn_of(version), exact.lsn_of(version));
            }
        }
        for lsn in 10..40 {
            assert_eq!(base.version(lsn), exact.version(lsn));
        }
        assert_eq!(
            VersionBase::from_points(base.points().to_vec()),
            Ok(base.clone())
        );
        assert!(VersionBase::from_points(vec![(5, 1), (3, 2)]).is_err());
        // The number of points is bounded; dropping the oldest is safe.
        let mut many = VersionBase::default();
        for i in 1..=(VERSION_POINTS_MAX as u64 + 10) {
            many.raise(i * 10, i * 1000);
        }
        assert_eq!(many.points().len(), VERSION_POINTS_MAX);
        assert_eq!(
            many.version(VERSION_POINTS_MAX as u64 * 10 + 100),
            (VERSION_POINTS_MAX as u64 + 10) * 1000
        );
    }
}
