//! Cross-checks the optimised search against a brute-force enumeration of
//! orders on many small random (and randomly corrupted) histories, so the
//! prunings in the checker cannot silently turn violations into passes or
//! vice versa.

use linearizability::sim::{generate, Rng, SimConfig};
use linearizability::{check, History, Limits, OpData, Operation, Outcome, Status};

/// Tries every order consistent with real time; info ops may be skipped
/// and may or may not take effect.
fn brute(ops: &[&Operation], done: &mut Vec<bool>, state: Option<String>) -> bool {
    let pending: Vec<usize> = (0..ops.len()).filter(|&i| !done[i]).collect();
    if pending.iter().all(|&i| ops[i].ret.is_none()) {
        return true;
    }
    let min_ret = pending.iter().filter_map(|&i| ops[i].ret).min().unwrap();
    for &i in &pending {
        let op = ops[i];
        if op.call > min_ret {
            continue;
        }
        let mut nexts: Vec<Option<String>> = Vec::new();
        match (&op.data, op.status) {
            (OpData::Read { observed }, _) => {
                if *observed == state {
                    nexts.push(state.clone());
                }
            }
            (OpData::Write { value }, _) => nexts.push(Some(value.clone())),
            (OpData::Delete, _) => nexts.push(None),
            (OpData::Cas { expected, new }, Status::Ok) => {
                if *expected == state {
                    nexts.push(Some(new.clone()));
                }
            }
            (OpData::Cas { expected, .. }, Status::Fail) => {
                if *expected != state {
                    nexts.push(state.clone());
                }
            }
            (OpData::Cas { expected, new }, Status::Info) => {
                nexts.push(state.clone());
                if *expected == state {
                    nexts.push(Some(new.clone()));
                }
            }
        }
        for n in nexts {
            done[i] = true;
            let ok = brute(ops, done, n);
            done[i] = false;
            if ok {
                return true;
            }
        }
    }
    false
}

fn brute_check(h: &History) -> bool {
    let mut keys: Vec<&str> = h.ops.iter().map(|o| o.key.as_str()).collect();
    keys.sort();
    keys.dedup();
    keys.iter().all(|k| {
        let ops: Vec<&Operation> = h
            .ops
            .iter()
            .filter(|o| o.key == *k)
            .filter(|o| {
                !matches!(
                    (&o.data, o.status),
                    (OpData::Read { .. }, Status::Fail | Status::Info)
                )
            })
            .filter(|o| {
                !matches!(
                    (&o.data, o.status),
                    (OpData::Write { .. } | OpData::Delete, Status::Fail)
                )
            })
            .collect();
        brute(&ops, &mut vec![false; ops.len()], None)
    })
}

#[test]
fn optimised_search_agrees_with_brute_force() {
    let mut rng = Rng::new(99);
    let (mut lin, mut non) = (0, 0);
    for seed in 0..1500 {
        let cfg = SimConfig {
            clients: 4,
            operations: 11,
            keys: 1,
            info_percent: 15,
            seed,
        };
        let text = generate(&cfg);
        let mut lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Corrupt most histories: swap a value for another seen one, or
        // flip an outcome.
        if seed % 4 != 0 {
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(lines.len() as u64) as usize;
                if lines[i]["type"] == "invoke" {
                    continue;
                }
                if rng.below(2) == 0 && lines[i]["f"] == "read" {
                    // Any value in the history's small value range, or absent.
                    let v = rng.below(6);
                    lines[i]["value"] = if v == 0 {
                        serde_json::Value::Null
                    } else {
                        v.to_string().into()
                    };
                } else {
                    lines[i]["type"] = ["ok", "fail", "info"][rng.below(3) as usize].into();
                }
            }
        }
        let text: String = lines.iter().map(|v| v.to_string() + "\n").collect();
        let h = History::parse_str(&text).unwrap();
        let expected = brute_check(&h);
        let got = match check(&h, &Limits::default()) {
            Outcome::Linearizable => true,
            Outcome::NotLinearizable(_) => false,
            Outcome::Unknown { .. } => panic!("no limit was set"),
        };
        assert_eq!(
            got, expected,
            "seed {seed}: checker says {got}, brute force {expected}\n{text}"
        );
        if expected {
            lin += 1
        } else {
            non += 1
        }
    }
    // The corpus must exercise both verdicts.
    assert!(lin > 50 && non > 50, "lin {lin} non {non}");
}
