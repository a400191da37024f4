//! The API's clock: milliseconds since the Unix epoch, as the store's timestamps and the wire
//! types' `at` fields count them.

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
