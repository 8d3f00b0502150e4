//! Data forms (XEP-0004): reading a submitted form's fields and building
//! the forms the server sends.

use crate::ns;
use crate::xml::Element;

/// A submitted form (`<x xmlns='jabber:x:data' type='submit'/>`), read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Submitted {
    fields: Vec<(String, Vec<String>)>,
}

impl Submitted {
    /// Reads the fields of `x` (a `jabber:x:data` element), in order; a
    /// field without `var` is skipped.
    pub fn read(x: &Element) -> Submitted {
        let fields = x
            .elements()
            .filter(|f| f.is(ns::DATA, "field"))
            .filter_map(|f| {
                let var = f.attr("var")?.to_owned();
                let values = f
                    .elements()
                    .filter(|v| v.is(ns::DATA, "value"))
                    .map(|v| v.text())
                    .collect();
                Some((var, values))
            })
            .collect();
        Submitted { fields }
    }

    /// The first value of field `var`, trimmed.
    pub fn value(&self, var: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(v, _)| v == var)
            .and_then(|(_, values)| values.first())
            .map(|v| v.trim())
    }

    /// The `FORM_TYPE` (XEP-0068).
    pub fn form_type(&self) -> Option<&str> {
        self.value("FORM_TYPE")
    }

    /// Whether field `var` is there.
    pub fn has(&self, var: &str) -> bool {
        self.fields.iter().any(|(v, _)| v == var)
    }

    /// A boolean field (XEP-0004 section 3.3: `1` or `true`); absent is false.
    pub fn flag(&self, var: &str) -> bool {
        matches!(self.value(var), Some("1" | "true"))
    }
}

/// A form of `type` (`form`, `result`) with its `FORM_TYPE`.
pub fn form(ty: &str, form_type: &str) -> Element {
    Element::new(ns::DATA, "x")
        .with_attr("type", ty)
        .with_child(field("FORM_TYPE", "hidden", None, Some(form_type)))
}

/// A field: `var`, `type`, an optional `label` and value.
pub fn field(var: &str, ty: &str, label: Option<&str>, value: Option<&str>) -> Element {
    let mut f = Element::new(ns::DATA, "field");
    if let Some(label) = label {
        f.set_attr("label", Some(label));
    }
    f.set_attr("var", Some(var));
    f.set_attr("type", Some(ty));
    if let Some(value) = value {
        f = f.with_child(Element::new(ns::DATA, "value").with_text(value));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_fragment;
    use crate::Limits;

    #[test]
    fn fields_are_read_as_submitted() {
        let x = parse_fragment(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>jabber:iq:register</value></field><field var='phone' type='text-single'><value> +15555215554 </value></field><field var='force' type='boolean'><value>1</value></field><field var='no-value'/><field type='fixed'><value>x</value></field></x>",
            &Limits::default(),
        )
        .unwrap();
        let f = Submitted::read(&x);
        assert_eq!(f.form_type(), Some("jabber:iq:register"));
        assert_eq!(f.value("phone"), Some("+15555215554"));
        assert!(f.flag("force"));
        assert!(!f.flag("accept-terms"));
        assert!(f.has("no-value") && f.value("no-value").is_none());
        let built =
            form("form", "urn:x").with_child(field("code", "text-single", Some("Code"), None));
        assert_eq!(
            built.to_xml(ns::CLIENT),
            "<x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE' type='hidden'><value>urn:x</value></field><field label='Code' var='code' type='text-single'/></x>"
        );
    }
}
