//! Wire format.

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u8 = 1;
