//! Architecture-specific setup. Hearth supports x86_64 only.

pub(crate) mod x86_64;
