//! Variable scopes: what an expression at a given step can see.

use super::state::Instance;
use crate::expr::Scope;
use serde_json::Value as Json;

/// The bindings visible through a chain of scope keys, plus extra bindings.
pub struct Bindings<'a> {
    inst: &'a Instance,
    scopes: &'a [String],
    extra: Vec<(&'a str, &'a Json)>,
}

impl<'a> Bindings<'a> {
    /// `input`, instance variables, then each scope in `scopes` (outermost first).
    pub fn new(inst: &'a Instance, scopes: &'a [String]) -> Self {
        Self {
            inst,
            scopes,
            extra: Vec::new(),
        }
    }

    /// Adds a binding that shadows the others.
    pub fn with(mut self, name: &'a str, value: &'a Json) -> Self {
        self.extra.push((name, value));
        self
    }
}

impl Scope for Bindings<'_> {
    fn visit(&self, f: &mut dyn FnMut(&str, &Json)) {
        f("input", &self.inst.input);
        for (name, value) in &self.inst.vars {
            f(name, value);
        }
        for key in self.scopes {
            for (name, value) in self.inst.scopes.get(key).into_iter().flatten() {
                f(name, value);
            }
        }
        for (name, value) in &self.extra {
            f(name, value);
        }
    }
}
