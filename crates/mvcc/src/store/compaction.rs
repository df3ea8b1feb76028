//! Physical compaction: what a `Compact` command removes from the history.

#[allow(unused_imports)]
use super::*;

impl<'t> Writer<'t> {
    /// Physical compaction at `at`: for every key keep its newest revision <= `at` unless it
    /// is a tombstone, plus everything after `at`. Only keys with history in
    /// (previous compact, at] can have droppable revisions, so we visit just those.
    pub(super) fn compact_to(&mut self, at: i64) -> Result<(), MvccError> {
        let lo = self.compact.max(0) + if self.compact >= 0 { 1 } else { 0 };
        let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        for item in self
            .rev
            .range((lo, i64::MIN)..=(at, i64::MAX))
            .map_err(db("scan rev"))?
        {
            let (k, v) = item.map_err(db("scan rev"))?;
            let (m, s) = k.value();
            let rec = RevRecord::decode_payload(&self.history().resolve(m, s, v.value())?)?;
            keys.insert(rec.key().to_vec());
        }
        for key in keys {
            let mut revs: Vec<(i64, i64, bool)> = Vec::new();
            for item in self
                .key_rev
                .range((key.as_slice(), i64::MIN, i64::MIN)..=(key.as_slice(), at, i64::MAX))
                .map_err(db("scan key_rev"))?
            {
                let (k, v) = item.map_err(db("scan key_rev"))?;
                let (_, m, s) = k.value();
                revs.push((m, s, decode_key_rev_flag(&key, m, s, v.value())?));
            }
            let Some(&(_, _, last_tomb)) = revs.last() else {
                continue;
            };
            let drop_n = if last_tomb {
                revs.len()
            } else {
                revs.len() - 1
            };
            for &(m, s, _) in &revs[..drop_n] {
                super::history::remove(&mut self.rev, &mut self.rev_chunk, m, s)?;
                self.key_rev
                    .remove((key.as_slice(), m, s))
                    .map_err(db("compact key_rev"))?;
            }
            if last_tomb {
                let later = key_rev_last_le(&self.key_rev, &key, i64::MAX)?;
                if later.is_none() {
                    let e =
                        get_index(&self.index, &key)?.expect("compacted key has an index entry");
                    assert!(
                        e.tombstone && e.mod_main <= at,
                        "only a tombstoned key leaves the index"
                    );
                    self.index
                        .remove(key.as_slice())
                        .map_err(db("compact key_index"))?;
                }
            }
        }
        self.compact = at;
        Ok(())
    }
}
