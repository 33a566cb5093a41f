//! `weir-operator install-cni`, the real binary against real directories:
//! weir's conflist follows the primary (rewritten in place as flannel's
//! `cp` does, removed, malformed), comes back when edited or deleted, is
//! never seen half-written, and goes on uninstall with nothing else; the
//! binary is copied whole and only when it differs.
//!
//! Every wait polls with a deadline. The installers run with a long
//! resync interval unless a test is about the timer, so what they do in
//! time is inotify's doing.

mod install_cni_common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use install_cni_common::*;

#[test]
fn weir_conflist_follows_the_primary_and_is_never_half_written() {
    let node = Node::new("follow");
    node.write_primary("10-flannel.conflist", FLANNEL);
    let observer = Observer::start(&node);
    let mut installer = node.start(&args(&[
        "--resync-interval",
        "10m",
        "--invalid-primary-grace",
        "300ms",
    ]));
    let log = installer.logger();

    // Installed: binary first, then the conflist with weir last.
    wait_for("weir's conflist", || node.weir_file().is_some(), &log);
    assert!(node.binary_ok(), "binary not installed whole");
    assert_eq!(
        node.weir_file().unwrap(),
        expected(FLANNEL, "10-flannel.conflist")
    );
    assert_eq!(
        types(&node.weir_file().unwrap()),
        ["flannel", "portmap", "weir"]
    );
    wait_for("the ready file", || node.ready.exists(), &log);
    let ready_line = fs::read_to_string(&node.ready).unwrap();
    assert!(
        ready_line.contains("weir chained onto 10-flannel.conflist"),
        "{ready_line}"
    );
    installer.wait_log(&format!("wrote {}/{WEIR_FILE}", node.conf.display()));
    installer.wait_log("why: it did not exist");
    installer.wait_log(&format!("installed {}/weir", node.bin.display()));

    // flannel restarts: its file rewritten in place with other content.
    node.write_primary("10-flannel.conflist", FLANNEL_BW);
    wait_for(
        "weir's conflist to follow the rewritten primary",
        || node.weir_file() == Some(expected(FLANNEL_BW, "10-flannel.conflist")),
        &log,
    );
    installer.wait_log("why: 10-flannel.conflist changed");

    // weir's file deleted: back.
    fs::remove_file(node.conf.join(WEIR_FILE)).unwrap();
    wait_for(
        "weir's conflist to come back",
        || node.weir_file().is_some(),
        &log,
    );
    assert_eq!(
        node.weir_file().unwrap(),
        expected(FLANNEL_BW, "10-flannel.conflist")
    );
    installer.wait_log("why: it was removed");

    // weir's file edited (the marker kept): put back.
    let mut edited = node.weir_file().unwrap();
    edited["plugins"][3]["logLevel"] = "error".into();
    edited[TEST_EDIT_KEY] = true.into();
    replace(&node.conf.join(WEIR_FILE), edited.to_string().as_bytes());
    wait_for(
        "weir's conflist to be put back after an edit",
        || node.weir_file() == Some(expected(FLANNEL_BW, "10-flannel.conflist")),
        &log,
    );
    installer.wait_log("why: it was edited outside the installer");

    // The binary overwritten by something else, then deleted: put back.
    replace(&node.bin.join("weir"), FOREIGN_BINARY);
    wait_for("the binary to be put back", || node.binary_ok(), &log);
    fs::remove_file(node.bin.join("weir")).unwrap();
    wait_for(
        "the binary to be put back after removal",
        || node.binary_ok(),
        &log,
    );

    // The primary removed: weir's conflist goes, readiness too.
    fs::remove_file(node.conf.join("10-flannel.conflist")).unwrap();
    wait_for("weir's conflist to go", || node.weir_file().is_none(), &log);
    wait_for("the ready file to go", || !node.ready.exists(), &log);
    installer.wait_log("no valid primary CNI config in");
    installer.wait_log(&format!(
        "removed weir's {}/{WEIR_FILE}",
        node.conf.display()
    ));

    // Back, malformed: still nothing, and the log says which file and why.
    node.write_primary("10-flannel.conflist", "garbage");
    installer.wait_log(&format!(
        "no valid primary CNI config in {}: 10-flannel.conflist: expected value at line 1 column 1",
        node.conf.display()
    ));
    assert!(node.weir_file().is_none());
    installer.assert_running();

    // Valid again: back.
    node.write_primary("10-flannel.conflist", FLANNEL);
    wait_for(
        "weir's conflist after the primary is fixed",
        || node.weir_file() == Some(expected(FLANNEL, "10-flannel.conflist")),
        &log,
    );
    wait_for("the ready file", || node.ready.exists(), &log);

    // Nothing else in the conf dir or the bin dir: no temp files left.
    assert_eq!(
        node.conf_names(),
        BTreeSet::from(["10-flannel.conflist".to_string(), WEIR_FILE.to_string()])
    );
    assert_eq!(
        names(&node.bin),
        BTreeSet::from(["flannel".to_string(), "weir".to_string()])
    );

    // No API server configured: SIGTERM keeps everything.
    let status = installer.term();
    assert!(status.success(), "{status}; log:\n{}", installer.log());
    assert!(node.weir_file().is_some() && node.binary_ok());
    assert!(
        !node.ready.exists(),
        "the ready file outlived the installer"
    );
    assert!(
        installer
            .log()
            .contains("leaving weir's conflist and binary in place: no DaemonSet named"),
        "{}",
        installer.log()
    );

    let seen = observer.finish();
    // The states seen: absent, and whole files for both primaries.
    assert!(seen.contains("(absent)"));
    assert!(seen.len() >= 3, "{seen:?}");
    // Logs are plain text when stderr is not a terminal.
    assert!(!installer.log().contains('\x1b'), "ANSI escapes in the log");
}

#[test]
fn a_primary_rewritten_in_place_does_not_drop_weir() {
    // flannel's install copies its conflist over the old one: the file is
    // empty for a moment. Within the grace weir's conflist stays.
    let node = Node::new("grace");
    node.write_primary("10-flannel.conflist", FLANNEL);
    let mut installer = node.start(&args(&[
        "--resync-interval",
        "10m",
        "--invalid-primary-grace",
        "5s",
    ]));
    let log = installer.logger();
    wait_for("weir's conflist", || node.weir_file().is_some(), &log);
    let observer = Observer::start(&node);
    let start = Instant::now();
    fs::File::create(node.conf.join("10-flannel.conflist")).unwrap();
    // Seen empty by the installer before the content comes.
    installer.wait_log("10-flannel.conflist: empty file");
    node.write_primary("10-flannel.conflist", FLANNEL_BW);
    wait_for(
        "weir's conflist to follow",
        || node.weir_file() == Some(expected(FLANNEL_BW, "10-flannel.conflist")),
        &log,
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the test itself was too slow for the grace"
    );
    assert!(
        !observer.saw_absent(),
        "weir's conflist went away within the grace"
    );
    observer.finish();
    installer.assert_running();
}

#[test]
fn no_primary_at_start_then_one_appears() {
    let node = Node::new("late");
    fs::remove_dir_all(&node.conf).unwrap();
    // No conf dir at all: nothing to watch; the timer finds it later.
    let mut installer = node.start(&args(&["--resync-interval", "300ms"]));
    let log = installer.logger();
    installer.wait_log("no valid primary CNI config in");
    installer.wait_log("no .conf/.conflist/.json file besides weir's");
    wait_for("the binary", || node.binary_ok(), &log);
    assert!(!node.ready.exists());
    // Not ready: the probe says so.
    let probe = node.command(&["--ready-check"]).output().unwrap();
    assert!(!probe.status.success());
    assert!(String::from_utf8_lossy(&probe.stderr).contains("not ready"));

    fs::create_dir_all(&node.conf).unwrap();
    node.write_primary("10-flannel.conflist", FLANNEL);
    wait_for("weir's conflist", || node.weir_file().is_some(), &log);
    wait_for("the ready file", || node.ready.exists(), &log);
    let probe = node.command(&["--ready-check"]).output().unwrap();
    assert!(probe.status.success(), "{probe:?}");
    assert!(
        String::from_utf8_lossy(&probe.stdout).contains("weir chained onto 10-flannel.conflist")
    );
    // Once watched, an edit is seen without waiting for the timer (which
    // would also do it; here it only shows the watch was added).
    fs::remove_file(node.conf.join(WEIR_FILE)).unwrap();
    wait_for("weir's conflist back", || node.weir_file().is_some(), &log);
    installer.assert_running();
}

#[test]
fn empty_malformed_and_empty_list_primaries_get_no_weir_conflist() {
    for (text, why) in [
        ("", "10-flannel.conflist: empty file"),
        ("{\"name\":", "10-flannel.conflist: EOF while parsing"),
        (
            r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[]}"#,
            "10-flannel.conflist: no plugins in list",
        ),
    ] {
        let node = Node::new("invalid");
        node.write_primary("10-flannel.conflist", text);
        // A stale conflist of weir's from before: it goes (after the grace).
        let stale = serde_json::to_string(&expected(FLANNEL, "10-flannel.conflist")).unwrap();
        fs::write(node.conf.join(WEIR_FILE), stale).unwrap();
        let installer = node.start(&args(&["--invalid-primary-grace", "200ms"]));
        installer.wait_log(why);
        wait_for(
            "the stale conflist to go",
            || node.weir_file().is_none(),
            || installer.log(),
        );
        assert_eq!(
            node.conf_names(),
            BTreeSet::from(["10-flannel.conflist".to_string()])
        );
        assert!(!node.ready.exists());
        // The binary is in place all the same (harmless without a conflist).
        assert!(node.binary_ok());
    }
}

#[test]
fn a_primary_that_runs_weir_already_or_sorts_first() {
    // Already chained by hand: left alone.
    let node = Node::new("already");
    let chained =
        r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"},{"type":"weir"}]}"#;
    node.write_primary("10-flannel.conflist", chained);
    let installer = node.start(&args(&[]));
    installer.wait_log("10-flannel.conflist already runs weir: leaving it alone");
    wait_for("the ready file", || node.ready.exists(), || installer.log());
    assert_eq!(
        node.conf_names(),
        BTreeSet::from(["10-flannel.conflist".to_string()])
    );
    assert_eq!(
        fs::read_to_string(node.conf.join("10-flannel.conflist")).unwrap(),
        chained
    );
    drop(installer);

    // A primary that sorts before 00-weir.conflist: weir's file is named
    // to sort before it, and a .conf primary is made a list.
    let node = Node::new("sorts-first");
    let conf = r#"{"cniVersion":"1.0.0","name":"mynet","type":"bridge","bridge":"cni0"}"#;
    node.write_primary("00-aaa.conf", conf);
    let installer = node.start(&args(&[]));
    let renamed = "00-0-weir.conflist";
    wait_for(
        "weir's renamed conflist",
        || node.read_json(renamed).is_some(),
        || installer.log(),
    );
    let list = node.read_json(renamed).unwrap();
    assert_eq!(types(&list), ["bridge", "weir"]);
    assert_eq!(list["name"], "mynet");
    assert_eq!(list["cniVersion"], "1.0.0");
    installer.wait_log(
        "00-aaa.conf sorts before 00-weir.conflist, so weir's conflist is named 00-0-weir.conflist",
    );
    let mut sorted: Vec<String> = node.conf_names().into_iter().collect();
    sorted.sort();
    assert_eq!(sorted[0], renamed);
}

#[test]
fn uninstall_removes_only_what_it_wrote() {
    let node = Node::new("uninstall");
    node.write_primary("10-flannel.conflist", FLANNEL);
    let mut installer = node.start(&args(&[]));
    wait_for(
        "weir's conflist",
        || node.weir_file().is_some(),
        || installer.log(),
    );
    wait_for("the ready file", || node.ready.exists(), || installer.log());
    assert!(installer.term().success());
    assert!(
        node.weir_file().is_some(),
        "SIGTERM without a DaemonSet configured uninstalled"
    );

    // A user's conflist that names weir's file name but is not weir's
    // (no marker) would stay; here: an unrelated file that must stay.
    fs::write(node.conf.join("99-other.conflist"), FLANNEL).unwrap();
    let out = node.command(&["--uninstall"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "uninstall: removed {}/{WEIR_FILE}",
            node.conf.display()
        )),
        "{log}"
    );
    assert!(log.contains("is gone"), "{log}");
    assert_eq!(
        node.conf_names(),
        BTreeSet::from([
            "10-flannel.conflist".to_string(),
            "99-other.conflist".to_string()
        ])
    );
    assert_eq!(names(&node.bin), BTreeSet::from(["flannel".to_string()]));
    assert_eq!(
        fs::read_to_string(node.conf.join("10-flannel.conflist")).unwrap(),
        FLANNEL
    );
    assert!(
        out.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A weir binary that is not the image's stays; so does the binary
    // while a conflist that is not weir's still runs weir.
    fs::write(node.bin.join("weir"), FOREIGN_BINARY).unwrap();
    let out = node.command(&["--uninstall"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("not the binary this installer ships"), "{log}");
    assert_eq!(fs::read(node.bin.join("weir")).unwrap(), FOREIGN_BINARY);

    fs::copy(&node.source, node.bin.join("weir")).unwrap();
    let chained =
        r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"},{"type":"weir"}]}"#;
    node.write_primary("10-flannel.conflist", chained);
    let out = node.command(&["--uninstall"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("10-flannel.conflist (not weir's) still runs weir"),
        "{log}"
    );
    assert!(node.binary_ok());
    assert_eq!(
        fs::read_to_string(node.conf.join("10-flannel.conflist")).unwrap(),
        chained
    );
}

#[test]
fn a_restart_rewrites_nothing() {
    let node = Node::new("restart");
    node.write_primary("10-flannel.conflist", FLANNEL);
    let mut first = node.start(&args(&[]));
    wait_for("the ready file", || node.ready.exists(), || first.log());
    assert!(first.term().success());
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let (conf_ino, bin_ino) = (
        inode(&node.conf.join(WEIR_FILE)),
        inode(&node.bin.join("weir")),
    );

    let second = node.start(&args(&[]));
    wait_for("the ready file", || node.ready.exists(), || second.log());
    assert_eq!(
        inode(&node.conf.join(WEIR_FILE)),
        conf_ino,
        "conflist rewritten"
    );
    assert_eq!(inode(&node.bin.join("weir")), bin_ino, "binary rewritten");
    let log = second.log();
    assert!(
        !log.contains("wrote ") && !log.contains("installed "),
        "{log}"
    );
}

#[test]
fn bad_flags_are_refused() {
    let node = Node::new("flags");
    for bad in [
        &["--failure-policy", "Sometimes"][..],
        &["--attach", "xdp"],
        &["--conflist-name", "weir.conf"],
        &["--resync-interval", "0s"],
    ] {
        let out = node.command(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
    }
    // A relative stateDir is refused when the entry is checked (weir's own
    // parser): no conflist, and the reason.
    node.write_primary("10-flannel.conflist", FLANNEL);
    let installer = node.start(&["--state-dir", "var/lib/weir"]);
    installer.wait_log("stateDir must be an absolute path");
    assert!(node.weir_file().is_none());
}

#[test]
fn without_the_binary_there_is_no_conflist_and_one_error_line() {
    let node = Node::new("nobinary");
    let source = fs::read(&node.source).unwrap();
    fs::remove_file(&node.source).unwrap();
    node.write_primary("10-flannel.conflist", FLANNEL);
    let installer = node.start(&args(&[
        "--resync-interval",
        "200ms",
        "--log-level",
        "debug",
    ]));
    // A few resyncs: the error is logged once, then at debug.
    installer.wait_log("still: cannot install");
    installer.wait_log("weir's binary is not installed");
    let log = installer.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("ERROR") && l.contains("cannot install"))
            .count(),
        1,
        "{log}"
    );
    assert!(
        node.weir_file().is_none(),
        "a conflist naming a missing binary"
    );
    assert!(!node.ready.exists());
    // The image's binary back: installed, then the conflist.
    replace(&node.source, &source);
    wait_for(
        "weir's conflist",
        || node.weir_file().is_some(),
        installer.logger(),
    );
    assert!(node.binary_ok());
}
