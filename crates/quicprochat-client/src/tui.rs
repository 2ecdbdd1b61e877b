//! placeholder replaced below
pub async fn run(
    _client: quicprochat_sdk::QpcClient,
    _events: tokio::sync::broadcast::Receiver<quicprochat_sdk::ClientEvent>,
) -> anyhow::Result<()> {
    anyhow::bail!("the TUI is not built yet")
}
