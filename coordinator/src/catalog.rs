//! placeholder until the catalog lands
