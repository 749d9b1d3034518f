//! Conditions computed by compile. Timestamps are added by whoever writes them (compile has no
//! clock), and only when a condition's status changes.

use super::ObjectRef;

/// One condition, without its transition time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, `PartiallyInvalid`.
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable detail, naming fields.
    pub message: String,
}

impl Condition {
    /// A condition.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions compile computed for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The object.
    pub object: ObjectRef,
    /// The `metadata.generation` compiled.
    pub observed_generation: Option<i64>,
    /// Its conditions.
    pub conditions: Vec<Condition>,
}

impl StatusReport {
    /// The condition of this type, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
