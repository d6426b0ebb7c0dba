//! Pure rules: no I/O, no clock. Time always comes in as an argument.

pub mod code;
pub mod phone;
pub mod verification;

pub use code::{Code, CodeError, CodeHasher};
pub use phone::{PhoneError, PhoneNumber};
pub use verification::{
    CheckOutcome, Delivery, DeliveryError, DeliveryStatus, StatusEvent, Verification,
    VerificationId, VerificationStatus,
};
