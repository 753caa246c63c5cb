//! What vmoodle knows about Moodle itself: how to write PHP values, the per-host files and the
//! config hook that picks an instance from the request host, how to add that hook to a Moodle
//! config.php (4.x and 5.x layouts), and how to read a config.php's `$CFG` without running
//! Moodle's setup.

pub mod caches;
pub mod config_php;
pub mod dataroot;
pub mod files;
pub mod fixups;
pub mod hook;
pub mod hostfile;
pub mod mnet;
pub mod php;
pub mod php_env;
pub mod probe;
