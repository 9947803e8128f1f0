//! Property: loading arbitrary text or arbitrarily mutated policies never panics; it returns
//! policies or an error.

use palisade_policy::load;
use palisade_policy::suite::Suite;
use proptest::prelude::*;

const SEED: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: b}}]\n    toPorts:\n    - ports: [{port: \"80\", endPort: 90, protocol: TCP}]\n      rules: {http: [{method: GET, path: \"/a.*\"}]}\n  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]\n  - toFQDNs: [{matchPattern: \"*.example.com\"}]\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = load::load_file("f.yaml", &text);
        let _ = Suite::parse("s.yaml", &text).map(|s| s.build(vec![]).map(|e| s.run(&e)));
    }

    #[test]
    fn mutated_policies_never_panic(pos in 0usize..SEED.len(), cut in 0usize..8, insert in "[ -~\\n]{0,6}") {
        let mut text = SEED.to_string();
        let pos = (0..=pos).rev().find(|p| text.is_char_boundary(*p)).unwrap_or(0);
        let end = (pos + cut).min(text.len());
        let end = (end..=text.len()).find(|p| text.is_char_boundary(*p)).unwrap_or(text.len());
        text.replace_range(pos..end, &insert);
        let _ = load::load_file("f.yaml", &text);
    }
}
