//! Integration tests: the vmoodle binary against real MariaDB, PostgreSQL and php-cli.

mod common;
mod dbserver;
mod deploy;
mod hook;
mod hostile;
mod import;
mod init_settings;
mod instances;
mod master;
mod mnet;
