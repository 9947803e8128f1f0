//! Policy custom resources and Kubernetes NetworkPolicy, exactly as `kubectl apply` takes them.

pub mod cilium;
pub mod meta;
pub mod networkpolicy;

pub use cilium::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy};
pub use meta::{LabelSelector, LabelSelectorRequirement, ObjectMeta, Operator};
pub use networkpolicy::NetworkPolicy;

/// API group/version of the Cilium policy objects.
pub const CILIUM_API_VERSION: &str = "cilium.io/v2";
/// API group/version of Kubernetes NetworkPolicy.
pub const NETWORKING_API_VERSION: &str = "networking.k8s.io/v1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_through_json() {
        let cnp = r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"x"},
            "spec":{"endpointSelector":{"matchLabels":{"app":"a"}},
              "ingress":[{"fromEndpoints":[{"matchExpressions":[{"key":"env","operator":"NotIn","values":["dev"]}]}],
                          "toPorts":[{"ports":[{"port":"80","endPort":90,"protocol":"TCP"}],"rules":{"http":[{"method":"GET"}]}}]}],
              "egress":[{"toFQDNs":[{"matchPattern":"*.example.com"}],"icmps":[{"fields":[{"type":8,"family":"IPv4"}]}]}],
              "enableDefaultDeny":{"egress":false}}}"#;
        let p: CiliumNetworkPolicy = serde_json::from_str(cnp).expect("parses");
        let again: CiliumNetworkPolicy =
            serde_json::from_str(&serde_json::to_string(&p).expect("serializes")).expect("parses");
        assert_eq!(p, again);
        let np = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"n"},
            "spec":{"podSelector":{},"policyTypes":["Ingress"],"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}}],"ports":[{"port":"http"},{"port":80,"endPort":90}]}]}}"#;
        let p: NetworkPolicy = serde_json::from_str(np).expect("parses");
        let again: NetworkPolicy =
            serde_json::from_str(&serde_json::to_string(&p).expect("serializes")).expect("parses");
        assert_eq!(p, again);
        let bad = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"n"},"spec":{"podSelector":{},"ingres":[]}}"#;
        assert!(
            serde_json::from_str::<NetworkPolicy>(bad)
                .unwrap_err()
                .to_string()
                .contains("unknown field `ingres`")
        );
    }
}
