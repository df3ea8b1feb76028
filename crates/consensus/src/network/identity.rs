//! `--peer-cert-identity`: a peer message is served only if the member id
//! it claims (`x-phalanx-from`) belongs to the member whose name its
//! connection's verified client certificate carries, as subject CN or DNS
//! subject alternative name.
//!
//! Peer TLS with `--peer-client-cert-auth` proves that the sender holds
//! *some* certificate of the peer CA; without this binding, any holder can
//! claim any member id (vote with it, append as the leader, send control
//! messages as the leader). With it, a member's certificate speaks for that
//! member only. [`PeerService`](super::PeerService) runs [`check`] before
//! [`PeerHandler::admit`](super::PeerHandler::admit), so a refused message
//! has no effect at all (not even on the control-message rate budget).
//!
//! Cases, by what the receiving member knows of the claimed sender
//! ([`SenderName`]):
//! - a member with a name: the certificate must name it; a `PublishClientUrls`
//!   must also be for the sender itself and under a name the certificate
//!   carries (it renames the member otherwise);
//! - a member added by `member add` that has not started yet has no name:
//!   the only message accepted is its own `PublishClientUrls`, which names
//!   it, under a name its certificate carries and no other member has;
//! - a member id not in the membership: left to `admit` (refused there as
//!   `not_member` or `removed`);
//! - no membership at all (a member that has just joined and not yet
//!   received any): the certificate must name one of the other members in
//!   its `--initial-cluster`.
//!
//! `Join` ("which member am I?") is exempt: the joiner knows no id yet.

use crate::network::{LeaderRequest, PeerRequest};
use crate::types::{Member, NodeId};

/// The `phalanx_peer_rejected_total{reason}` label of a refusal by [`check`].
pub const CERT_IDENTITY_REASON: &str = "cert_identity";

/// What the receiving member knows of a message's claimed sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderName {
    /// A member with this name (`--name`) in the applied membership.
    Named(String),
    /// A member without a name yet (added by `member add`, not started);
    /// `taken`: the names of the other members.
    Unnamed { taken: Vec<String> },
    /// Not a member of the applied membership.
    NotMember,
    /// This member has no membership yet; `expected`: the names of the
    /// other members in its `--initial-cluster`.
    NoMembership { expected: Vec<String> },
}

/// Who `from` is, from the applied membership's `members`, this member's
/// own `--name` and its `--initial-cluster`.
pub fn sender_name<'a>(
    members: impl Iterator<Item = (&'a NodeId, &'a Member)>,
    from: NodeId,
    own_name: &str,
    initial_cluster: &[(String, Vec<String>)],
) -> SenderName {
    let mut taken = Vec::new();
    let mut sender = None;
    let mut any = false;
    for (id, m) in members {
        any = true;
        if *id == from {
            sender = Some(m.name.clone());
        } else if !m.name.is_empty() {
            taken.push(m.name.clone());
        }
    }
    match sender {
        Some(name) if !name.is_empty() => SenderName::Named(name),
        Some(_) => SenderName::Unnamed { taken },
        None if any => SenderName::NotMember,
        None => SenderName::NoMembership {
            expected: initial_cluster
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| n != own_name)
                .collect(),
        },
    }
}

/// Whether `req`, claimed to come from member `from` (known here as
/// `sender`), may be served on a connection described by `conn`; the error
/// says why not, for the refusal's message and the log.
pub fn check(
    sender: &SenderName,
    from: NodeId,
    req: &PeerRequest,
    conn: Option<&tls::ConnInfo>,
) -> Result<(), String> {
    if matches!(req, PeerRequest::Join { .. }) || *sender == SenderName::NotMember {
        return Ok(());
    }
    let conn = match conn {
        Some(c) if c.peer_cn.is_some() || !c.peer_dns_names.is_empty() => c,
        _ => {
            return Err(format!(
                "message claiming member {from:x} came without a verified client certificate; with \
                 --peer-cert-identity every peer must present its own (https:// peer URLs, \
                 --peer-client-cert-auth)"
            ))
        }
    };
    let names = || {
        format!(
            "CN {:?}, DNS names {:?}",
            conn.peer_cn.as_deref().unwrap_or(""),
            conn.peer_dns_names
        )
    };
    // A name announcement must be the sender's own, under a certified name.
    if let PeerRequest::Leader(LeaderRequest::PublishClientUrls { id, name, .. }) = req {
        if *id != from {
            return Err(format!(
                "member {from:x} announced a name for member {id:x}; a member announces only its own"
            ));
        }
        if !conn.certificate_names(name) {
            return Err(format!(
                "member {from:x} announced the name {name:?}, which its certificate ({}) does not carry",
                names()
            ));
        }
    }
    match sender {
        SenderName::NotMember => Ok(()),
        SenderName::Named(name) if conn.certificate_names(name) => Ok(()),
        SenderName::Named(name) => Err(format!(
            "message claiming member {from:x} ({name:?}) came with a certificate for {}; a member's \
             certificate must carry its name as CN or DNS name",
            names()
        )),
        SenderName::Unnamed { taken } => match req {
            PeerRequest::Leader(LeaderRequest::PublishClientUrls { name, .. })
                if !taken.iter().any(|t| t.eq_ignore_ascii_case(name)) =>
            {
                Ok(())
            }
            PeerRequest::Leader(LeaderRequest::PublishClientUrls { name, .. }) => Err(format!(
                "member {from:x} announced the name {name:?}, which another member already has"
            )),
            _ => Err(format!(
                "member {from:x} has no name yet (added, not started): until it announces one \
                 under its certificate ({}), nothing else from it is accepted",
                names()
            )),
        },
        SenderName::NoMembership { expected } => {
            if expected.iter().any(|n| conn.certificate_names(n)) {
                Ok(())
            } else {
                Err(format!(
                    "message claiming member {from:x} came with a certificate for {}, which names \
                     none of the other members in --initial-cluster ({expected:?})",
                    names()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(cn: &str, dns: &[&str]) -> tls::ConnInfo {
        tls::ConnInfo {
            tls: true,
            peer_cn: Some(cn.into()),
            peer_dns_names: dns.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    fn publish(id: NodeId, name: &str) -> PeerRequest {
        PeerRequest::Leader(LeaderRequest::PublishClientUrls {
            id,
            name: name.into(),
            client_urls: Vec::new(),
        })
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            peer_urls: Vec::new(),
            client_urls: Vec::new(),
            auto_promote: false,
        }
    }

    const VOTE_LIKE: PeerRequest = PeerRequest::ElectAfter { ms: 0 };

    #[test]
    fn a_named_member_is_accepted_only_with_a_certificate_naming_it() {
        let n2 = SenderName::Named("n2".into());
        assert!(check(&n2, 2, &VOTE_LIKE, Some(&conn("n2", &[]))).is_ok());
        assert!(check(&n2, 2, &VOTE_LIKE, Some(&conn("peer", &["N2"]))).is_ok());
        let e = check(&n2, 2, &VOTE_LIKE, Some(&conn("n1", &["n1.example"]))).unwrap_err();
        assert!(e.contains("\"n2\"") && e.contains("\"n1\""), "{e}");
        // No certificate (plain connection, or no client auth): refused.
        assert!(check(&n2, 2, &VOTE_LIKE, Some(&tls::ConnInfo::default())).is_err());
        assert!(check(&n2, 2, &VOTE_LIKE, None).is_err());
        // Join is exempt; an unknown id is left to `admit`.
        let join = PeerRequest::Join {
            peer_urls: Vec::new(),
        };
        assert!(check(&n2, 2, &join, None).is_ok());
        assert!(check(&SenderName::NotMember, 9, &VOTE_LIKE, None).is_ok());
    }

    #[test]
    fn a_name_announcement_is_for_the_sender_and_certified() {
        let n2 = SenderName::Named("n2".into());
        let c = conn("n2", &[]);
        assert!(check(&n2, 2, &publish(2, "n2"), Some(&c)).is_ok());
        // Renaming itself to a name it holds no certificate for, or
        // announcing for another member: refused.
        assert!(check(&n2, 2, &publish(2, "n3"), Some(&c)).is_err());
        assert!(check(&n2, 2, &publish(3, "n2"), Some(&c)).is_err());
    }

    #[test]
    fn an_unnamed_member_may_only_announce_its_certified_unused_name() {
        let new = SenderName::Unnamed {
            taken: vec!["n1".into(), "n2".into()],
        };
        let c4 = conn("n4", &[]);
        assert!(check(&new, 4, &publish(4, "n4"), Some(&c4)).is_ok());
        assert!(check(&new, 4, &VOTE_LIKE, Some(&c4)).is_err());
        // A member's certificate cannot claim the new member under its name.
        let e = check(&new, 4, &publish(4, "n1"), Some(&conn("n1", &[]))).unwrap_err();
        assert!(e.contains("already has"), "{e}");
    }

    #[test]
    fn without_a_membership_the_certificate_names_another_initial_member() {
        let fresh = SenderName::NoMembership {
            expected: vec!["n1".into(), "n2".into()],
        };
        assert!(check(&fresh, 7, &VOTE_LIKE, Some(&conn("n1", &[]))).is_ok());
        assert!(check(&fresh, 7, &VOTE_LIKE, Some(&conn("intruder", &[]))).is_err());
    }

    #[test]
    fn the_sender_is_looked_up_in_the_membership() {
        let members = [(1, member("n1")), (2, member("n2")), (4, member(""))];
        let it = || members.iter().map(|(i, m)| (i, m));
        let initial = vec![("n1".to_string(), vec![]), ("n4".to_string(), vec![])];
        assert_eq!(
            sender_name(it(), 2, "n1", &initial),
            SenderName::Named("n2".into())
        );
        assert_eq!(
            sender_name(it(), 4, "n1", &initial),
            SenderName::Unnamed {
                taken: vec!["n1".into(), "n2".into()]
            }
        );
        assert_eq!(sender_name(it(), 9, "n1", &initial), SenderName::NotMember);
        assert_eq!(
            sender_name(std::iter::empty(), 9, "n4", &initial),
            SenderName::NoMembership {
                expected: vec!["n1".into()]
            }
        );
    }
}
