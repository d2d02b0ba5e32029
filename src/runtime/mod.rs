//! Production implementations of the IO traits: the only module that uses Tokio, real time
//! and real threads.
