//! Pure rules: no I/O, no clock. Time always comes in as an argument.

pub mod code;
pub mod keys;
pub mod limits;
pub mod phone;
pub mod verification;

pub use code::{Code, CodeError, CodeHasher};
pub use keys::{Keyring, SendSecret};
pub use limits::Limit;
pub use phone::{redact_numbers, PhoneError, PhoneNumber};
pub use verification::{
    Attempt, Channel, ChannelChoice, CheckOutcome, Checked, CodeTag, Delivery, DeliveryError,
    DeliveryStatus, NewVerification, Purpose, SendOutcome, StatusEvent, Verification,
    VerificationId, VerificationStatus,
};
