//! Issue #27: `convert` registry to registry against a real registry (Debian's
//! `docker-registry`, started per test on 127.0.0.1): the umoci-built image pushed with skopeo,
//! converted to v6, v5, native EROFS layers and a merged index; each target read back by
//! skopeo and by our readers, equal to `umoci unpack` and to a local `create -t oci` of the
//! same image; a second convert uploads nothing; a proxy that cuts connections; wrong
//! credentials, with basic auth and with the docker token flow (bearer JWTs).

use crate::common::*;
use crate::fault_proxy::FaultProxy;
use crate::registry::{self, small_layout, Registry};
use crate::umoci_image::*;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// `convert` with the flags every test passes (plain HTTP, quick retries).
/// An empty `target` asks for `--target-suffix -nydus` instead.
fn convert(source: &str, target: &str, work: &Path, extra: &[&str]) -> std::process::Output {
    let (flag, value) = if target.is_empty() {
        ("--target-suffix", "-nydus")
    } else {
        ("--target", target)
    };
    let mut args = vec![
        "convert",
        "--source",
        source,
        flag,
        value,
        "--plain-http",
        "--push-retry-delay",
        "20ms",
        "--work-dir",
        s(work),
    ];
    args.extend_from_slice(extra);
    forge(&args)
}

/// The image bootstrap of a nydus image in an OCI layout (its bootstrap layer's
/// `image/image.boot`).
fn bootstrap_of(layout: &Path, out: &Path) -> PathBuf {
    let m = manifest_of(layout);
    let top = m["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        top["annotations"]["containerd.io/snapshot/nydus-bootstrap"],
        "true"
    );
    let gz = fs::read(blob(layout, top["digest"].as_str().unwrap())).unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("image/image.boot") {
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            fs::write(out, b).unwrap();
            return out.to_path_buf();
        }
    }
    panic!("no image/image.boot in the bootstrap layer");
}

/// A nydus image pulled back from the registry by skopeo and unpacked by our reader, its
/// data read from the pulled blobs and those of `more` (the gzip layers `--oci-ref`
/// references); checked first. Returns the unpacked tree and the bootstrap.
fn pull_and_unpack(
    reg: &Registry,
    repo_ref: &str,
    w: &Path,
    more: Option<&Path>,
) -> (PathBuf, PathBuf) {
    let name = repo_ref.replace([':', '/', '@'], "-");
    let pulled = w.join(format!("pulled-{name}"));
    reg.pull_to_oci(repo_ref, &format!("{}:t", s(&pulled)));
    let boot = bootstrap_of(&pulled, &w.join(format!("{name}.boot")));
    let mut blobs = pulled.join("blobs/sha256");
    if let Some(more) = more {
        let all = w.join(format!("blobs-{name}"));
        fs::create_dir_all(&all).unwrap();
        for dir in [blobs.as_path(), more] {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                fs::copy(e.path(), all.join(e.file_name())).unwrap();
            }
        }
        blobs = all;
    }
    forge(&["check", s(&boot), "-D", s(&blobs)]);
    let dest = w.join(format!("unpacked-{name}"));
    forge(&[
        "unpack",
        s(&boot),
        "-D",
        s(&blobs),
        "--output-dir",
        s(&dest),
    ]);
    (dest, boot)
}

fn same_tree(what: &str, expect: &Path, got: &Path) {
    let d = diff(&manifest(expect), &manifest(got));
    assert!(
        d.is_empty(),
        "{what}: {} differences from umoci unpack:\n{}",
        d.len(),
        d.join("\n")
    );
}

/// The umoci test image, pushed into a registry as `app:t`.
struct Pushed {
    /// Its OCI layout (tag `t`).
    img: PathBuf,
    /// The tree `umoci unpack` gives of it.
    expect: PathBuf,
}

/// Builds the umoci test image for `test` and pushes it into `reg` as `app:t`.
fn umoci_image_in(reg: &Registry, test: &str, w: &Path) -> Pushed {
    let (img, expect) = image_and_rootfs(test, w);
    reg.push_oci_layout(&format!("{}:t", s(&img)), "app:t");
    Pushed { img, expect }
}

/// The digest of the manifest `create -t oci` writes locally for the same image.
fn local_manifest(img: &Path, w: &Path, extra: &[&str]) -> String {
    let layout = w.join(format!("local-{}", extra.join("-").replace('/', "_")));
    let mut args = vec!["create", "-t", "oci", "-D", s(&layout)];
    args.extend_from_slice(extra);
    let src = format!("{}:t", s(img));
    args.push(&src);
    forge(&args);
    let index = json(&layout.join("index.json"));
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
#[cfg_attr(
    any(no_registry, no_skopeo, no_umoci, no_root),
    ignore = "needs docker-registry, skopeo, umoci, root"
)]
fn registry_to_registry_matches_umoci() {
    let w = scratch();
    let reg = Registry::start();
    let Pushed { img, expect } =
        umoci_image_in(&reg, "registry_to_registry_matches_umoci", w.path());
    let src = reg.reference("app:t");
    let work = w.path().join("work");
    for v in ["6", "5"] {
        let target = reg.reference(&format!("app:t-nydus-v{v}"));
        let json_out = w.path().join(format!("convert-v{v}.json"));
        convert(
            &src,
            &target,
            &work,
            &["--fs-version", v, "--oci", "-J", s(&json_out)],
        );
        // skopeo reads the target; its layers are nydus blobs and a bootstrap layer
        let raw = reg.inspect_raw(&format!("app:t-nydus-v{v}"));
        let layers = raw["layers"].as_array().unwrap();
        assert!(layers[..layers.len() - 1]
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.nydus.blob.v1"));
        let summary = reg.inspect(&format!("app:t-nydus-v{v}"));
        assert_eq!(summary["Architecture"], "amd64");
        // the same bytes a local conversion of the same image writes
        let report = json(&json_out);
        let local = local_manifest(&img, w.path(), &["--fs-version", v]);
        assert_eq!(report["platforms"][0]["target_manifest"], local.as_str());
        assert_eq!(report["target_digest"], local.as_str());
        assert!(report["TargetImageSize"].as_u64().unwrap() > 0);
        // pulled back by skopeo and read by our reader: umoci unpack's tree
        let (dest, _) = pull_and_unpack(&reg, &format!("app:t-nydus-v{v}"), w.path(), None);
        same_tree(&format!("convert v{v}, pulled back"), &expect, &dest);
    }
    // a second identical convert uploads no blob again: only the manifest and tag
    let puts = reg.blob_puts();
    let target = reg.reference("app:t-nydus-v6");
    let again = convert(&src, &target, &work, &["--fs-version", "6", "--oci"]);
    let printed = String::from_utf8_lossy(&again.stdout);
    assert!(printed.contains("0 pushed"), "{printed}");
    assert_eq!(reg.blob_puts(), puts, "no blob is uploaded twice");
    // nothing of the work is left behind
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0);
}

#[test]
#[cfg_attr(
    any(no_registry, no_skopeo, no_umoci, no_root),
    ignore = "needs docker-registry, skopeo, umoci, root"
)]
fn erofs_layers_and_merged_index() {
    let w = scratch();
    let reg = Registry::start();
    let Pushed { img, .. } = umoci_image_in(&reg, "erofs_layers_and_merged_index", w.path());
    let src = reg.reference("app:t");
    let work = w.path().join("work");
    // native EROFS layers: the same blobs `create -t oci --layer-format erofs` writes
    convert(
        &src,
        &reg.reference("erofs:t"),
        &work,
        &["--target-format", "erofs", "--oci"],
    );
    let raw = reg.inspect_raw("erofs:t");
    let local_layout = w.path().join("local-erofs");
    forge(&[
        "create",
        "-t",
        "oci",
        "--layer-format",
        "erofs",
        "-D",
        s(&local_layout),
        &format!("{}:t", s(&img)),
    ]);
    let local = manifest_of(&local_layout);
    assert_eq!(raw["layers"], local["layers"]);
    for l in raw["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], "application/vnd.erofs.layer.v1");
    }
    reg.inspect("erofs:t");
    // --merge-platform: the source manifest first, then the nydus one marked as nydusify marks it
    convert(
        &src,
        &reg.reference("merged:t"),
        &work,
        &["--merge-platform"],
    );
    let index = reg.inspect_raw("merged:t");
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    let source_digest = reg.inspect("app:t")["Digest"].as_str().unwrap().to_string();
    assert_eq!(entries[0]["digest"], source_digest.as_str());
    assert!(entries[0].get("artifactType").is_none());
    assert_eq!(
        entries[1]["artifactType"],
        "application/vnd.nydus.image.manifest.v1+json"
    );
    assert_eq!(entries[1]["platform"]["architecture"], "amd64");
    // both manifests are in the target repository, readable by skopeo
    let out = reg.client().inspect(
        &format!("merged@{}", entries[1]["digest"].as_str().unwrap()),
        true,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the source layers came by cross-repository mount, not upload
    assert!(reg.blob_mounts() > 0, "the original blobs are mounted");
    // --with-referrer: the converted manifest names its source
    convert(&src, &reg.reference("ref:t"), &work, &["--with-referrer"]);
    let m = reg.inspect_raw("ref:t");
    assert_eq!(m["subject"]["digest"], source_digest.as_str());
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn cut_connections_are_resumed_or_reported() {
    let w = scratch();
    let reg = Registry::start();
    // a 3 MiB incompressible layer: its pull through a proxy cutting every connection after
    // 1 MiB resumes where it broke off
    let (layout, _) = small_layout(&w.path().join("img"), "t", 3 << 20);
    reg.push_oci_layout(&layout, "big:t");
    let proxy = FaultProxy::start(&reg.addr(), Some(1 << 20));
    let via_proxy = format!("{}/big:t", proxy.addr());
    let work = w.path().join("work");
    let json_out = w.path().join("out.json");
    convert(
        &via_proxy,
        &reg.reference("big:nydus"),
        &work,
        &["--push-retry-count", "8", "-J", s(&json_out)],
    );
    assert!(
        proxy.cut() >= 2,
        "the proxy cut {} connections",
        proxy.cut()
    );
    reg.inspect("big:nydus");
    // the same image as converted without the proxy
    let direct = w.path().join("direct.json");
    convert(
        &reg.reference("big:t"),
        &reg.reference("big:nydus2"),
        &work,
        &["-J", s(&direct)],
    );
    assert_eq!(
        json(&json_out)["target_digest"],
        json(&direct)["target_digest"]
    );
    // no retries: one line naming the registry and the blob, and no tag written
    let err = forge_fails(&[
        "convert",
        "--source",
        &via_proxy,
        "--target",
        &reg.reference("big:never"),
        "--plain-http",
        "--push-retry-count",
        "0",
        "--work-dir",
        s(&work),
    ]);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(&proxy.addr()) && errors[0].contains("get blob sha256:"),
        "{err}"
    );
    let out = reg.client().inspect("big:never", true);
    assert!(!out.status.success(), "the tag must not exist");
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn wrong_credentials_are_one_line() {
    let w = scratch();
    let reg = Registry::start_with_auth("alice", "right");
    let (layout, _) = small_layout(&w.path().join("img"), "t", 4096);
    reg.push_oci_layout(&layout, "small:t");
    let cfg = w.path().join("docker");
    fs::create_dir_all(&cfg).unwrap();
    let write_auth = |pass: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pass}"));
        let doc = serde_json::json!({"auths": {reg.addr(): {"auth": auth}}});
        fs::write(cfg.join("config.json"), doc.to_string()).unwrap();
    };
    let work = w.path().join("work");
    let args = |target: &str| -> Vec<String> {
        [
            "convert",
            "--source",
            &reg.reference("small:t"),
            "--target",
            target,
            "--plain-http",
            "--push-retry-delay",
            "20ms",
            "--work-dir",
            s(&work),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    write_auth("wrong");
    let a = args(&reg.reference("small:nydus"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_erofs-forge"))
        .args(&a)
        .env("DOCKER_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(&reg.addr()) && errors[0].contains("unauthorized"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    write_auth("right");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_erofs-forge"))
        .args(&a)
        .env("DOCKER_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a credential helper (credsStore), as docker login with a store leaves it: asked with
    // the registry on stdin, it answers with the secret
    let helpers = w.path().join("helpers");
    fs::create_dir_all(&helpers).unwrap();
    let helper = helpers.join("docker-credential-forgetest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{}\" ] || exit 1\n\
             echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"alice\",\"Secret\":\"right\"}}'\n",
            reg.addr()
        ),
    )
    .unwrap();
    let mut perm = fs::metadata(&helper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    fs::set_permissions(&helper, perm).unwrap();
    fs::write(cfg.join("config.json"), r#"{"credsStore": "forgetest"}"#).unwrap();
    let path = format!(
        "{}:{}",
        s(&helpers),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_erofs-forge"))
        .args(args(&reg.reference("small:helper")))
        .env("DOCKER_CONFIG", &cfg)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = reg.client().inspect("small:helper", true);
    assert!(o.status.success());
}

/// Writes `$DOCKER_CONFIG/config.json` (`cfg`) with `auths` holding `user:password` for
/// `registry`, as `docker login` without a credential store leaves it.
fn write_docker_auth(cfg: &Path, registry: &str, user: &str, password: &str) {
    use base64::Engine as _;
    fs::create_dir_all(cfg).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let doc = serde_json::json!({"auths": {registry: {"auth": auth}}});
    fs::write(cfg.join("config.json"), doc.to_string()).unwrap();
}

/// [`convert`]'s run with `$DOCKER_CONFIG` set to `cfg`, its output returned failed or not.
fn convert_with_config(
    cfg: &Path,
    source: &str,
    target: &str,
    work: &Path,
) -> std::process::Output {
    let args = [
        "convert",
        "--source",
        source,
        "--target",
        target,
        "--plain-http",
        "--push-retry-delay",
        "20ms",
        "--work-dir",
        s(work),
    ];
    std::process::Command::new(env!("CARGO_BIN_EXE_erofs-forge"))
        .args(args)
        .env("DOCKER_CONFIG", cfg)
        .output()
        .expect("spawn erofs-forge")
}

/// Token requests erofs-forge itself made (oci-client sends its user agent to the realm too),
/// not skopeo's.
fn forge_token_requests(reg: &Registry) -> Vec<registry::TokenRequest> {
    reg.token_requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("erofs-forge/"))
        .collect()
}

/// The docker token flow (most public registries use it; htpasswd basic auth is tested
/// above): convert fetches JWTs from the registry's realm with the docker config's basic
/// credentials and sends them as `Authorization: Bearer`. A wrong password is turned away by
/// the token server, then by the registry: one error line, nothing written.
#[test]
#[cfg_attr(
    any(no_registry, no_skopeo, no_umoci, no_root),
    ignore = "needs docker-registry, skopeo, umoci, root"
)]
fn bearer_token_registry_converts_and_a_wrong_password_is_one_line() {
    let test = "bearer_token_registry_converts_and_a_wrong_password_is_one_line";
    let w = scratch();
    let reg = Registry::start_with_token("alice", "right");
    let Pushed { expect, .. } = umoci_image_in(&reg, test, w.path());
    assert!(reg.tokens_issued() > 0, "{:#?}", reg.token_requests());
    let (source, target) = (reg.reference("app:t"), reg.reference("app:nydus"));
    let (cfg, work) = (w.path().join("docker"), w.path().join("work"));
    let stored = (reg.blob_puts(), reg.manifest_puts());

    write_docker_auth(&cfg, &reg.addr(), "alice", "wrong");
    let out = convert_with_config(&cfg, &source, &target, &work);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(&reg.addr()) && errors[0].contains("unauthorized"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // convert did ask the token server, which refused it: no token went to erofs-forge
    let asked = forge_token_requests(&reg);
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r.status == 401),
        "{asked:#?}"
    );
    let o = reg.client().inspect("app:nydus", true);
    assert!(!o.status.success(), "the tag must not exist");
    assert_eq!((reg.blob_puts(), reg.manifest_puts()), stored);

    write_docker_auth(&cfg, &reg.addr(), "alice", "right");
    let out = convert_with_config(&cfg, &source, &target, &work);
    assert!(
        out.status.success(),
        "{}\nregistry requests: {:#?}\ntoken requests: {:#?}",
        String::from_utf8_lossy(&out.stderr),
        reg.requests(),
        reg.token_requests()
    );
    // the bearer flow carried it: erofs-forge got a token to push to the repository, and the
    // registry (which takes nothing else) stored blobs and the manifest
    let issued: Vec<_> = forge_token_requests(&reg)
        .into_iter()
        .filter(|r| r.issued())
        .collect();
    assert!(
        issued
            .iter()
            .any(|r| r.scopes.iter().any(|s| s == "repository:app:pull,push")),
        "{issued:#?}"
    );
    let requests = reg.requests();
    assert!(
        reg.blob_puts() > stored.0
            && requests
                .iter()
                .any(|r| r.is_manifest_put() && r.path() == "/v2/app/manifests/nydus"),
        "{requests:#?}"
    );
    // skopeo reads the target (through tokens of its own); our reader its tree
    assert_eq!(reg.inspect("app:nydus")["Architecture"], "amd64");
    let raw = reg.inspect_raw("app:nydus");
    let layers = raw["layers"].as_array().unwrap();
    assert!(layers[..layers.len() - 1]
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.nydus.blob.v1"));
    let (dest, _) = pull_and_unpack(&reg, "app:nydus", w.path(), None);
    same_tree(
        "convert through a token registry, pulled back",
        &expect,
        &dest,
    );
}

#[test]
#[cfg_attr(
    any(no_registry, no_skopeo, no_umoci, no_root),
    ignore = "needs docker-registry, skopeo, umoci, root"
)]
fn oci_ref_references_the_source_layers() {
    let w = scratch();
    let reg = Registry::start();
    let Pushed { img, expect } =
        umoci_image_in(&reg, "oci_ref_references_the_source_layers", w.path());
    let work = w.path().join("work");
    // into another repository: the gzip layers it references are mounted there
    convert(
        &reg.reference("app:t"),
        &reg.reference("zran:t"),
        &work,
        &["--oci-ref"],
    );
    let raw = reg.inspect_raw("zran:t");
    let source_layers = manifest_of(&img)["layers"].as_array().unwrap().clone();
    let layers = raw["layers"].as_array().unwrap();
    assert_eq!(layers.len(), source_layers.len() + 1);
    for (l, src) in layers.iter().zip(&source_layers) {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.nydus.blob.v1"
        );
        assert_eq!(
            l["annotations"]["containerd.io/snapshot/nydus-ref"],
            src["digest"]
        );
    }
    // the referenced layers came into the target repository by mount, not upload
    assert!(reg.blob_mounts() >= source_layers.len());
    // pulled back: the ref blobs and the bootstrap; the data comes from the gzip layers
    let img_blobs = img.join("blobs/sha256");
    let (dest, _) = pull_and_unpack(&reg, "zran:t", w.path(), Some(&img_blobs));
    same_tree("convert --oci-ref, pulled back", &expect, &dest);
}

#[test]
#[cfg_attr(
    any(no_registry, no_skopeo, no_umoci, no_root),
    ignore = "needs docker-registry, skopeo, umoci, root"
)]
fn chunk_dict_image_in_a_registry() {
    let w = scratch();
    let reg = Registry::start();
    let Pushed { expect, .. } = umoci_image_in(&reg, "chunk_dict_image_in_a_registry", w.path());
    let work = w.path().join("work");
    // the dictionary: the image itself, converted into its own repository
    convert(
        &reg.reference("app:t"),
        &reg.reference("dict:t"),
        &work,
        &[],
    );
    let dict = reg.inspect_raw("dict:t");
    let dict_blobs: Vec<&str> = dict["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["annotations"]["containerd.io/snapshot/nydus-blob"] == "true")
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    // converted against it: every chunk is the dictionary's, so no data blob is uploaded;
    // the manifest names the dictionary's blobs, mounted into the target repository
    let before = reg.requests().len();
    let dict_arg = format!("bootstrap:registry:{}", reg.reference("dict:t"));
    convert(
        &reg.reference("app:t"),
        &reg.reference("deduped:t"),
        &work,
        &["--chunk-dict", &dict_arg],
    );
    let m = reg.inspect_raw("deduped:t");
    let blobs: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["annotations"]["containerd.io/snapshot/nydus-blob"] == "true")
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert!(!blobs.is_empty());
    assert!(
        blobs.iter().all(|b| dict_blobs.contains(b)),
        "{blobs:?} {dict_blobs:?}"
    );
    // only the bootstrap layer and the config were uploaded
    let uploads: Vec<String> = reg.requests()[before..]
        .iter()
        .filter(|r| r.is_blob_put())
        .map(|r| r.uri.clone())
        .collect();
    assert_eq!(
        uploads.len(),
        2,
        "{uploads:#?} dict {dict_blobs:?} image {blobs:?}"
    );
    // pulled back and read: umoci unpack's tree
    let (dest, _) = pull_and_unpack(&reg, "deduped:t", w.path(), None);
    same_tree("convert --chunk-dict, pulled back", &expect, &dest);
}

/// A one-layer OCI image layout (gzip layer, tag `tag`) of a tar, as a registry would hold a
/// base image: the layer streamed through gzip once, both digests taken on the way.
fn layout_of_tar(tar: &Path, dir: &Path, tag: &str) -> String {
    use sha2::Digest as _;
    use std::io::Write as _;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    struct Hashing<W>(W, sha2::Sha256, u64);
    impl<W: std::io::Write> std::io::Write for Hashing<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.0.write(b)?;
            self.1.update(&b[..n]);
            self.2 += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }
    let tmp = blobs.join("layer.tmp");
    let out = Hashing(fs::File::create(&tmp).unwrap(), sha2::Sha256::new(), 0);
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut diff = sha2::Sha256::new();
    let mut f = fs::File::open(tar).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        diff.update(&buf[..n]);
        gz.write_all(&buf[..n]).unwrap();
    }
    let Hashing(_, h, size) = gz.finish().unwrap();
    let layer = hex::encode(h.finalize());
    fs::rename(&tmp, blobs.join(&layer)).unwrap();
    let put = |doc: serde_json::Value| -> (String, usize) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let d = sha256_hex(&bytes);
        fs::write(blobs.join(&d), &bytes).unwrap();
        (d, bytes.len())
    };
    let (config, config_size) = put(serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(diff.finalize()))]},
    }));
    let (manifest, manifest_size) = put(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{layer}"), "size": size}],
    }));
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{manifest}"), "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
    format!("{}:{tag}", s(dir))
}

/// A Debian bookworm base image (the tree `cargo xtask test` debootstraps, its tar in
/// `target/debian-image`), pushed with
/// skopeo and converted: the nydus image pulled back and read equals the tree, and the native
/// EROFS layer pulled back and mounted by the kernel equals it too.
#[test]
#[cfg_attr(
    any(no_registry, no_skopeo, no_debian, no_mount),
    ignore = "needs docker-registry, skopeo, the Debian tree (cargo xtask test), a kernel EROFS mount"
)]
fn debian_image_round_trip() {
    let w = scratch();
    let tree = repo().join("target/xtask-trees/debian");
    let layout = layout_of_tar(
        &repo().join("target/debian-image/debian.tar"),
        &w.path().join("debian"),
        "bookworm",
    );
    let reg = Registry::start();
    reg.push_oci_layout(&layout, "debian:bookworm");
    let work = w.path().join("work");
    convert(
        &reg.reference("debian:bookworm"),
        &reg.reference("debian:bookworm-nydus"),
        &work,
        &[],
    );
    let (dest, _) = pull_and_unpack(&reg, "debian:bookworm-nydus", w.path(), None);
    same_tree("Debian, convert v6, pulled back", &tree, &dest);
    fs::remove_dir_all(&dest).unwrap();
    // native EROFS: the layer is an image the kernel mounts
    convert(
        &reg.reference("debian:bookworm"),
        &reg.reference("debian:bookworm-erofs"),
        &work,
        &["--target-format", "erofs", "--erofs-compressor", "lz4hc"],
    );
    let pulled = w.path().join("pulled-erofs");
    reg.pull_to_oci("debian:bookworm-erofs", &format!("{}:t", s(&pulled)));
    let layer = manifest_of(&pulled)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let m = mount(&blob(&pulled, &layer), &[]);
    same_tree(
        "Debian, --target-format erofs, kernel mount",
        &tree,
        m.dir.path(),
    );
}

/// A two-platform image layout (linux/amd64 and linux/arm64, one gzip layer each holding a
/// file naming its platform) under an image index tagged `tag`.
fn two_platform_layout(dir: &Path, tag: &str) -> String {
    use std::io::Write as _;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = sha256_hex(bytes);
        fs::write(blobs.join(&d), bytes).unwrap();
        (d, bytes.len())
    };
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut t = tar::Builder::new(Vec::new());
        let body = format!("built for {arch}\n");
        let mut h = tar::Header::new_gnu();
        h.set_path("etc/arch").unwrap();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        t.append(&h, body.as_bytes()).unwrap();
        let tar_bytes = t.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar_bytes).unwrap();
        let (layer, layer_size) = put(&gz.finish().unwrap());
        let (config, config_size) = put(
            serde_json::json!({
                "architecture": arch, "os": "linux", "config": {},
                "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar_bytes))]},
            })
            .to_string()
            .as_bytes(),
        );
        let (manifest, manifest_size) = put(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": format!("sha256:{config}"), "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": format!("sha256:{layer}"), "size": layer_size}],
        })
        .to_string()
        .as_bytes());
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest}"), "size": manifest_size,
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let (index, index_size) = put(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string()
    .as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{index}"), "size": index_size,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    fs::write(dir.join("index.json"), top.to_string()).unwrap();
    format!("{}:{tag}", s(dir))
}

/// The file `etc/arch` of the nydus image `repo_ref`, pulled back with skopeo.
fn arch_file_of(reg: &Registry, repo_ref: &str, w: &Path) -> String {
    let (dest, _) = pull_and_unpack(reg, repo_ref, w, None);
    fs::read_to_string(dest.join("etc/arch")).unwrap()
}

#[test]
#[cfg_attr(any(no_registry, no_skopeo), ignore = "needs docker-registry, skopeo")]
fn platforms_manifest_kinds_suffix_and_prefetch() {
    let w = scratch();
    let reg = Registry::start();
    let layout = two_platform_layout(&w.path().join("multi"), "t");
    let out = registry::skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        &format!("oci:{layout}"),
        &format!("docker://{}", reg.reference("multi:t")),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let work = w.path().join("work");
    // one platform asked for: a plain manifest of that platform
    convert(
        &reg.reference("multi:t"),
        &reg.reference("multi:arm"),
        &work,
        &["--platform", "linux/arm64"],
    );
    let m = reg.inspect_raw("multi:arm");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        arch_file_of(&reg, "multi:arm", w.path()),
        "built for arm64\n"
    );
    // every platform: an index of the two converted manifests
    convert(
        &reg.reference("multi:t"),
        &reg.reference("multi:all"),
        &work,
        &["--all-platforms"],
    );
    let index = reg.inspect_raw("multi:all");
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    // merged: the two originals, then the two nydus manifests
    convert(
        &reg.reference("multi:t"),
        &reg.reference("multi:merged"),
        &work,
        &["--all-platforms", "--merge-platform"],
    );
    let merged = reg.inspect_raw("multi:merged");
    let entries = merged["manifests"].as_array().unwrap();
    let source = reg.inspect_raw("multi:t");
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[..2], source["manifests"].as_array().unwrap()[..]);
    assert!(entries[2..]
        .iter()
        .all(|e| e["artifactType"] == "application/vnd.nydus.image.manifest.v1+json"));
    // docker v2 manifests, a target named by its suffix
    convert(
        &reg.reference("multi:t"),
        "",
        &work,
        &["--docker-v2-format", "--platform", "linux/amd64"],
    );
    // (skopeo 1.9 reads the raw manifest; it refuses nydus layer types in a docker manifest,
    // as it does for nydusify's, so only --raw is asked)
    let m = reg.inspect_raw("multi:t-nydus");
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        m["layers"].as_array().unwrap().last().unwrap()["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    // prefetch patterns on stdin, as nydusify takes them
    let target = reg.reference("multi:prefetch");
    let source = reg.reference("multi:t");
    let args = [
        "convert",
        "--source",
        &source,
        "--target",
        &target,
        "--prefetch-patterns",
        "--platform",
        "linux/amd64",
        "--plain-http",
        "--work-dir",
        s(&work),
    ];
    assert_ok(&run_with_stdin(&args, b"/etc/arch\n"));
    let (_, boot) = pull_and_unpack(&reg, "multi:prefetch", w.path(), None);
    let table = forge(&["inspect", "-R", "prefetch", s(&boot)]);
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
    assert_eq!(table[0]["path"][0], "/etc/arch", "{table}");
}

#[test]
#[cfg_attr(
    any(no_registry, no_skopeo, no_umoci, no_root),
    ignore = "needs docker-registry, skopeo, umoci, root"
)]
fn local_layouts_and_archives_in_and_out() {
    let w = scratch();
    let reg = Registry::start();
    let Pushed { img, .. } =
        umoci_image_in(&reg, "local_layouts_and_archives_in_and_out", w.path());
    let work = w.path().join("work");
    let local = local_manifest(&img, w.path(), &["--fs-version", "6"]);
    // registry → oci:DIR: the layout create -t oci writes
    let out = w.path().join("out-layout");
    let report = w.path().join("local.json");
    convert(
        &reg.reference("app:t"),
        &format!("oci:{}", s(&out)),
        &work,
        &["-J", s(&report)],
    );
    assert_eq!(json(&report)["target_digest"], local.as_str());
    assert_eq!(
        json(&out.join("index.json"))["manifests"][0]["digest"],
        local.as_str()
    );
    // registry → oci-archive:FILE, read by skopeo
    let archive = w.path().join("out.tar");
    convert(
        &reg.reference("app:t"),
        &format!("oci-archive:{}", s(&archive)),
        &work,
        &[],
    );
    let out2 = registry::skopeo(&["inspect", &format!("oci-archive:{}", s(&archive))]);
    assert!(
        out2.status.success(),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out2.stdout).unwrap();
    assert_eq!(summary["Digest"], local.as_str());
    // oci:DIR → registry: the same manifest, pushed under the tag
    convert(
        &format!("oci:{}:t", s(&img)),
        &reg.reference("from-local:t"),
        &work,
        &[],
    );
    assert_eq!(reg.inspect("from-local:t")["Digest"], local.as_str());
    // an archive as a source (the umoci image, archived by skopeo), into a layout
    let src_archive = w.path().join("src.tar");
    let o = registry::skopeo(&[
        "copy",
        &format!("oci:{}:t", s(&img)),
        &format!("oci-archive:{}:t", s(&src_archive)),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out3 = w.path().join("from-archive");
    convert(
        &format!("oci-archive:{}", s(&src_archive)),
        &format!("oci:{}", s(&out3)),
        &work,
        &["--target-format", "erofs"],
    );
    let m = manifest_of(&out3);
    assert!(m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.erofs.layer.v1"));
}
