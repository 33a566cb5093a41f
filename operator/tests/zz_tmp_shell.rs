#[test]
fn shell() {
    let cp = weir_e2e::controlplane::ControlPlane::start().unwrap();
    std::fs::write("/tmp/cp-kubeconfig-path", cp.kubeconfig_path().display().to_string()).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1500));
}
