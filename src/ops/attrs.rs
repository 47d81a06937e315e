//! The attribute schema: what an op family declares about its YAML attributes, and the parsed
//! values it receives. The loader (`config`) reads and checks attributes from these tables alone,
//! so a new op gets located errors and did-you-mean suggestions without code of its own.

use super::Activation;

/// The kind of value an attribute takes, with its allowed range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrKind {
    /// An integer in `min..=max`.
    Int {
        min: u64,
        max: u64,
    },
    /// An integer or an `[h, w]` pair, each at least `min`.
    Pair {
        min: u64,
    },
    Bool,
    /// A float greater than zero.
    PositiveFloat,
    /// An activation name, as the activation ops are named.
    Activation,
    /// One of a fixed set of names (an algorithm, a mode).
    Choice(&'static [&'static str]),
}

/// What an attribute is when a layer does not give it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrDefault {
    /// The layer must give it; the text says what it is.
    Required(&'static str),
    Value(AttrValue),
    /// The value of another attribute of the same layer (a pool's stride is its kernel).
    SameAs(&'static str),
}

/// One attribute an op accepts.
#[derive(Debug, Clone, Copy)]
pub struct AttrSpec {
    pub name: &'static str,
    pub kind: AttrKind,
    pub default: AttrDefault,
}

impl AttrSpec {
    pub const fn new(name: &'static str, kind: AttrKind, default: AttrDefault) -> AttrSpec {
        AttrSpec {
            name,
            kind,
            default,
        }
    }

    /// `` `stride` (1) ``, as the README's op table shows it.
    pub fn describe(&self) -> String {
        match self.default {
            AttrDefault::Required(_) => format!("`{}`", self.name),
            AttrDefault::SameAs(other) => format!("`{}` (= `{other}`)", self.name),
            AttrDefault::Value(v) => match self.kind {
                AttrKind::Choice(names) => {
                    let default = v.describe();
                    let others: Vec<&str> =
                        names.iter().copied().filter(|n| *n != default).collect();
                    format!("`{}` ({default}; or {})", self.name, others.join(", "))
                }
                _ => format!("`{}` ({})", self.name, v.describe()),
            },
        }
    }
}

/// A parsed attribute value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue {
    Int(usize),
    Pair([usize; 2]),
    Bool(bool),
    Float(f64),
    Activation(Activation),
    /// One of the names of an [`AttrKind::Choice`].
    Choice(&'static str),
}

impl AttrValue {
    fn describe(&self) -> String {
        match self {
            AttrValue::Int(n) => n.to_string(),
            AttrValue::Pair([a, b]) if a == b => a.to_string(),
            AttrValue::Pair([a, b]) => format!("[{a}, {b}]"),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Float(x) => format!("{x:e}"),
            AttrValue::Activation(Activation::Identity) => "none".into(),
            AttrValue::Activation(a) => a.name().into(),
            AttrValue::Choice(name) => (*name).into(),
        }
    }
}

/// A layer's attributes, every one of its op's present (defaults filled in).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attrs(Vec<(&'static str, AttrValue)>);

impl Attrs {
    pub fn new(values: Vec<(&'static str, AttrValue)>) -> Attrs {
        Attrs(values)
    }

    fn get(&self, name: &str) -> AttrValue {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("attribute `{name}` is not in the op's schema"))
    }

    /// The schema guarantees each attribute's kind, so a mismatch is a bug in an op file.
    pub fn int(&self, name: &str) -> usize {
        match self.get(name) {
            AttrValue::Int(n) => n,
            other => panic!("attribute `{name}` is {other:?}, not an integer"),
        }
    }

    pub fn pair(&self, name: &str) -> [usize; 2] {
        match self.get(name) {
            AttrValue::Pair(p) => p,
            other => panic!("attribute `{name}` is {other:?}, not a pair"),
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        match self.get(name) {
            AttrValue::Bool(b) => b,
            other => panic!("attribute `{name}` is {other:?}, not a boolean"),
        }
    }

    pub fn float(&self, name: &str) -> f64 {
        match self.get(name) {
            AttrValue::Float(x) => x,
            other => panic!("attribute `{name}` is {other:?}, not a float"),
        }
    }

    pub fn choice(&self, name: &str) -> &'static str {
        match self.get(name) {
            AttrValue::Choice(c) => c,
            other => panic!("attribute `{name}` is {other:?}, not a choice"),
        }
    }

    pub fn activation(&self, name: &str) -> Activation {
        match self.get(name) {
            AttrValue::Activation(a) => a,
            other => panic!("attribute `{name}` is {other:?}, not an activation"),
        }
    }
}
