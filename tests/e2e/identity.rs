//! Team self-service from the CLI: invitations, sign-in, roles that hold, tokens, the audit log.

use berth_tests::Fixture;

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn refused(output: std::process::Output) -> String {
    assert!(!output.status.success(), "expected a refusal: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_hold_from_the_cli() -> anyhow::Result<()> {
    let fixture = Fixture::new()?;
    let server = fixture.start_server().await?;
    let admin_config = fixture.dir.join("admin.json");
    let viewer_config = fixture.dir.join("viewer.json");
    let deployer_config = fixture.dir.join("deployer.json");
    let admin = |args: &[&str]| server.cli_as(&admin_config, Some(&server.token), "", args);

    // The admin invites a viewer and a deployer; they accept and sign in.
    for (config, email, role) in
        [(&viewer_config, "viewer@example.com", "viewer"), (&deployer_config, "dev@example.com", "deployer")]
    {
        let invite = ok(admin(&["invites", "create", "--role", role, "--email", email])?);
        let token = invite.trim();
        ok(server.cli_as(config, None, "a long password\n", &["invites", "accept", token, "--email", email])?);
        let signed_in = ok(server.cli_as(config, None, "a long password\n", &["login", "--email", email])?);
        assert!(signed_in.contains("signed in"), "{signed_in}");
        let whoami = ok(server.cli_as(config, None, "", &["whoami"])?);
        assert!(whoami.contains(email) && whoami.contains(role), "{whoami}");
    }
    let viewer = |args: &[&str]| server.cli_as(&viewer_config, None, "", args);
    let deployer = |args: &[&str]| server.cli_as(&deployer_config, None, "", args);

    // A viewer cannot deploy; a deployer can (no-wait: this test is about permissions).
    let create = ["apps", "create", "web", "--image", &fixture.image_v1, "--port", "8080", "--no-wait"];
    let why = refused(viewer(&create)?);
    assert!(why.contains("does not allow"), "{why}");
    ok(deployer(&create)?);
    assert!(ok(viewer(&["apps", "list"])?).contains("web"));
    // A deployer cannot manage members; the team's owner can.
    let why = refused(deployer(&["members", "role", "viewer@example.com", "deployer"])?);
    assert!(why.contains("does not allow"), "{why}");
    ok(admin(&["members", "role", "viewer@example.com", "deployer"])?);
    assert!(
        ok(admin(&["members", "list"])?).lines().any(|l| l.contains("viewer@example.com") && l.ends_with("deployer"))
    );

    // A CI token for the team, never above its creator's role.
    let why = refused(deployer(&["tokens", "create", "ci", "--for-team", "main", "--role", "owner"])?);
    assert!(why.contains("cannot carry owner"), "{why}");
    let ci = ok(deployer(&["tokens", "create", "ci", "--for-team", "main", "--role", "viewer"])?);
    let ci = ci.trim();
    let ci_config = fixture.dir.join("ci.json");
    assert!(ok(server.cli_as(&ci_config, Some(ci), "", &["apps", "list"])?).contains("web"));
    refused(server.cli_as(&ci_config, Some(ci), "", &["scale", "web", "2", "--no-wait"])?);
    let listed = ok(deployer(&["tokens", "list"])?);
    let id = listed.lines().find(|l| l.contains(" ci ")).and_then(|l| l.split_whitespace().next()).expect("listed");
    ok(deployer(&["tokens", "revoke", id])?);
    let why = refused(server.cli_as(&ci_config, Some(ci), "", &["apps", "list"])?);
    assert!(why.contains("not valid"), "{why}");

    // Another team stays invisible.
    ok(deployer(&["teams", "create", "side"])?);
    let why = refused(viewer(&["--team", "side", "apps", "list"])?);
    assert!(why.contains("not found"), "{why}");

    // The audit log says who did what, refusals included.
    let audit = ok(admin(&["audit", "--limit", "100"])?);
    assert!(
        audit.lines().any(|l| l.contains("dev@example.com") && l.contains("create_app") && l.contains("ok")),
        "{audit}"
    );
    assert!(
        audit.lines().any(|l| l.contains("viewer@example.com") && l.contains("create_app") && l.contains("denied")),
        "{audit}"
    );
    refused(viewer(&["audit"])?);
    Ok(())
}
