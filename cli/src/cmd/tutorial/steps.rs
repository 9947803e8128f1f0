//! The tutorial's steps: the policy files under `deploy/examples/zero-trust/` (compiled into the
//! binary, so the demo and its test apply exactly these bytes), and what every probe must show
//! after each one.

use std::collections::BTreeMap;

use super::probe::{Outcome, ProbeId};

/// One step: a policy file and what it changes in the expected results.
pub struct Step {
    /// File name under `deploy/examples/zero-trust/`.
    pub file: &'static str,
    /// Its YAML.
    pub yaml: &'static str,
    /// What the step does, in one line.
    pub title: &'static str,
    /// The probes whose expected outcome changes with this step.
    pub changes: &'static [(ProbeId, Outcome)],
}

macro_rules! example {
    ($file:literal) => {
        (
            $file,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/examples/zero-trust/",
                $file
            )),
        )
    };
}

use Outcome::{Allowed, Dropped, Forbidden};
use ProbeId::*;

/// Before any policy every probe succeeds.
pub fn initial() -> BTreeMap<ProbeId, Outcome> {
    super::probe::ALL.iter().map(|p| (*p, Allowed)).collect()
}

/// The steps in order.
pub fn steps() -> Vec<Step> {
    let step = |(file, yaml): (&'static str, &'static str), title, changes| Step {
        file,
        yaml,
        title,
        changes,
    };
    vec![
        step(
            example!("01-default-deny.yaml"),
            "Default deny, ingress and egress, for namespace demo",
            &[
                (FrontendGetApi, Dropped),
                (FrontendPostApi, Dropped),
                (FrontendHeadersApi, Dropped),
                (FrontendDb, Dropped),
                (ApiDb, Dropped),
                (ImpostorDb, Dropped),
                (FrontendDns, Dropped),
                (ApiFrontend, Dropped),
                (ClientFrontend, Dropped),
                (ApiPartnerByName, Dropped),
                (ApiElsewhere, Dropped),
            ],
        ),
        step(
            example!("02-allow-dns.yaml"),
            "DNS egress to kube-dns for every pod of demo",
            &[(FrontendDns, Allowed)],
        ),
        step(
            example!("03-frontend-to-api.yaml"),
            "frontend → api on TCP 5000",
            &[
                (FrontendGetApi, Allowed),
                (FrontendPostApi, Allowed),
                (FrontendHeadersApi, Allowed),
            ],
        ),
        step(
            example!("04-api-to-db.yaml"),
            "api → db (Redis) on TCP 6379",
            // The impostor carries the api's labels, so a label-based rule lets it in too.
            &[(ApiDb, Allowed), (ImpostorDb, Allowed)],
        ),
        step(
            example!("05-frontend-ingress.yaml"),
            "Ingress to the frontend from its own namespace only",
            &[(ApiFrontend, Allowed)],
        ),
        step(
            example!("06-api-l7.yaml"),
            "L7: the frontend may only GET /get and POST /post on the api",
            &[(FrontendHeadersApi, Forbidden)],
        ),
        step(
            example!("07-cluster-default-deny.yaml"),
            "Cluster-wide default deny (CiliumClusterwideNetworkPolicy), DNS excepted",
            &[(ClientPartner, Dropped)],
        ),
        step(
            example!("08-db-service-account.yaml"),
            "The database admits the api's service account, not its labels",
            &[(ImpostorDb, Dropped)],
        ),
        step(
            example!("09-fqdn-egress.yaml"),
            "FQDN egress: the api may reach partner.example.test, and nothing it did not resolve",
            &[(ApiPartnerByName, Allowed)],
        ),
    ]
}

/// Why each probe expects what it does at the end, for the summary.
pub fn expected_after_all() -> BTreeMap<ProbeId, Outcome> {
    let mut e = initial();
    for s in steps() {
        e.extend(s.changes.iter().copied());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expectations follow from the files: check the ones a reader would check by hand.
    #[test]
    fn final_expectations_are_the_tutorials() {
        let e = expected_after_all();
        assert_eq!(e[&FrontendGetApi], Allowed);
        assert_eq!(e[&FrontendHeadersApi], Forbidden);
        assert_eq!(e[&FrontendDb], Dropped);
        assert_eq!(e[&ImpostorDb], Dropped);
        assert_eq!(e[&ApiDb], Allowed);
        assert_eq!(e[&ClientFrontend], Dropped);
        assert_eq!(e[&ClientPartner], Dropped);
        assert_eq!(e[&ApiPartnerByName], Allowed);
        assert_eq!(e[&ApiElsewhere], Dropped);
        for s in steps() {
            assert!(s.yaml.contains("apiVersion: cilium.io/v2"), "{}", s.file);
        }
    }
}
