//! placeholder (sampler helper)
