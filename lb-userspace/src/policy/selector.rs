//! Kubernetes label selectors (`matchLabels`, `matchExpressions`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match `selector`; an empty selector matches everything.
/// Err names the first unusable requirement (an unknown operator, or
/// values where none belong): such a selector matches nothing.
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let mut by_expressions = true;
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let value = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or_default();
        let holds = match req.operator.as_str() {
            "In" if !values.is_empty() => value.is_some_and(|v| values.contains(v)),
            "NotIn" if !values.is_empty() => value.is_none_or(|v| !values.contains(v)),
            "Exists" if values.is_empty() => value.is_some(),
            "DoesNotExist" if values.is_empty() => value.is_none(),
            op => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {op:?} with {} values is not valid",
                    values.len()
                ));
            }
        };
        by_expressions &= holds;
    }
    Ok(by_labels && by_expressions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn labels_and_expressions_all_must_hold() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let cases: [(LabelSelector, Result<bool, ()>); 9] = [
            (LabelSelector::default(), Ok(true)),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                },
                Ok(true),
            ),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("app", "db")])),
                    ..Default::default()
                },
                Ok(false),
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("tier", "In", &["front", "x"])]),
                    ..Default::default()
                },
                Ok(true),
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("tier", "NotIn", &["front"])]),
                    ..Default::default()
                },
                Ok(false),
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("zone", "NotIn", &["a"])]),
                    ..Default::default()
                },
                Ok(true),
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![
                        req("app", "Exists", &[]),
                        req("zone", "DoesNotExist", &[]),
                    ]),
                    ..Default::default()
                },
                Ok(true),
            ),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: Some(vec![req("zone", "Exists", &[])]),
                },
                Ok(false),
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("app", "Equals", &["web"])]),
                    ..Default::default()
                },
                Err(()),
            ),
        ];
        for (i, (selector, want)) in cases.iter().enumerate() {
            assert_eq!(matches(selector, &pod).map_err(|_| ()), *want, "case {i}");
        }
    }
}
