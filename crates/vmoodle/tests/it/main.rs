//! Integration tests: the vmoodle binary against real MariaDB, PostgreSQL and php-cli.

mod clone;
mod cluster;
mod common;
mod daemon;
mod dbserver;
mod deploy;
mod doctor;
mod fleet;
mod fs_safety;
mod hook;
mod hostile;
mod import;
mod init_settings;
mod instances;
mod jobs;
mod master;
mod mnet;
mod mnet_live;
mod node;
