//! The meshreg deterministic simulator and property suites.
