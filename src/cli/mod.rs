//! Subcommands of the `passerelle` binary. Each file owns one subcommand family.

/// Writes a line on standard output, as `println!` does, through [`output`]: a failed write
/// neither panics nor passes unseen.
macro_rules! say {
    ($($t:tt)*) => {
        $crate::cli::output::line(format_args!($($t)*))
    };
}

pub mod audit;
pub mod certs;
pub mod deliveries;
pub mod demo;
pub mod load;
pub mod mapping;
pub mod output;
pub mod serve;

/// An HTTPS client presenting the development certificate of `partner` (`certs/dev/`), for the
/// command-line tools that play partners: one keep-alive connection, HTTP/1.1.
pub fn partner_client(partner: &str) -> anyhow::Result<reqwest::Client> {
    use passerelle::tls::dev;
    let files = dev::files(std::path::Path::new(dev::DEFAULT_DIR), partner);
    let mut tls = (*passerelle::tls::client_config(&files)?).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(1)
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}
