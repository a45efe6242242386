//! `portcullis policy explain` (the decision for one caller and target, and the rules
//! behind it) and `portcullis policy test` (the table tests kept beside policy files).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use portcullis_policy::file::AnnotationsFile;
use portcullis_policy::table::{self, Case, Who};
use portcullis_policy::{Policy, Target};

/// `portcullis policy ...`
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print the decision for a caller and a target, and every rule that matched.
    Explain(Box<ExplainArgs>),
    /// Run the table tests beside each policy file (`<name>.tests.yaml`).
    Test {
        /// Policy files, or directories of them (`*.tests.yaml` arguments are
        /// skipped, so a glob works).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// What `policy explain` asks about.
#[derive(Args)]
pub struct ExplainArgs {
    /// The gateway config (the route's policy and upstream come from it).
    #[arg(long, short)]
    config: PathBuf,
    /// The route's path. Default: the only route with a policy.
    #[arg(long)]
    route: Option<String>,
    /// The caller's `sub` (omit every identity flag for an anonymous caller).
    #[arg(long)]
    subject: Option<String>,
    /// The caller's issuer.
    #[arg(long)]
    issuer: Option<String>,
    /// The caller is this API key.
    #[arg(long)]
    api_key: Option<String>,
    /// A group or role (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// A scope (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// A kept claim, `path=value` (repeatable).
    #[arg(long = "claim")]
    claims: Vec<String>,
    /// A tool name.
    #[arg(long)]
    tool: Option<String>,
    /// A prompt name.
    #[arg(long)]
    prompt: Option<String>,
    /// A resource URI.
    #[arg(long)]
    resource: Option<String>,
    /// A resource template.
    #[arg(long)]
    resource_template: Option<String>,
    /// A method (alone, or the method used on the target).
    #[arg(long)]
    method: Option<String>,
    /// A tool annotation, e.g. `readOnlyHint=true` (repeatable; others take the spec's defaults).
    #[arg(long = "annotation")]
    annotations: Vec<String>,
}

/// Runs a `policy` subcommand.
pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Explain(args) => match explain(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        PolicyCommand::Test { files } => test(&files),
    }
}

fn annotations(list: &[String]) -> Result<Option<AnnotationsFile>, String> {
    if list.is_empty() {
        return Ok(None);
    }
    let mut a = AnnotationsFile::default();
    for item in list {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("--annotation {item}: expected name=true|false"))?;
        let v: bool = v
            .parse()
            .map_err(|_| format!("--annotation {item}: the value is true or false"))?;
        let slot = match k {
            "readOnlyHint" => &mut a.read_only_hint,
            "destructiveHint" => &mut a.destructive_hint,
            "idempotentHint" => &mut a.idempotent_hint,
            "openWorldHint" => &mut a.open_world_hint,
            other => return Err(format!("--annotation {other}: not an MCP tool annotation")),
        };
        *slot = Some(v);
    }
    Ok(Some(a))
}

fn explain(args: &ExplainArgs) -> Result<String, String> {
    let config = portcullis_config::load(&args.config).map_err(|e| e.to_string())?;
    let with_policy: Vec<_> = config
        .routes
        .iter()
        .filter(|r| r.policy.is_some())
        .collect();
    let route = match &args.route {
        Some(path) => with_policy
            .iter()
            .find(|r| r.path == *path)
            .ok_or_else(|| format!("no route {path} with a policy in {}", args.config.display()))?,
        None => match with_policy.as_slice() {
            [only] => only,
            [] => {
                return Err(format!(
                    "no route has a policy in {}",
                    args.config.display()
                ))
            }
            _ => return Err("several routes have policies: name one with --route".into()),
        },
    };
    let policy: &Policy = route.policy.as_deref().ok_or("the route has no policy")?;
    let upstream = config.upstreams[route.upstream].name.clone();
    let anonymous = args.subject.is_none()
        && args.api_key.is_none()
        && args.issuer.is_none()
        && args.groups.is_empty()
        && args.scopes.is_empty()
        && args.claims.is_empty();
    let mut claims = std::collections::BTreeMap::new();
    for c in &args.claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim {c}: expected path=value"))?;
        claims.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
    }
    let who = (!anonymous).then(|| Who {
        subject: args.subject.clone(),
        issuer: args.issuer.clone(),
        api_key: args.api_key.clone(),
        groups: args.groups.clone(),
        scopes: args.scopes.clone(),
        claims,
    });
    let case = Case {
        name: "explain".into(),
        who,
        tool: args.tool.clone(),
        prompt: args.prompt.clone(),
        resource: args.resource.clone(),
        resource_template: args.resource_template.clone(),
        method: args.method.clone(),
        upstream: Some(upstream.clone()),
        annotations: annotations(&args.annotations)?,
        expect: portcullis_policy::file::EffectName::Allow,
        rule: None,
    };
    let (kind, name, method) = case.target()?;
    let a = case.annotations();
    let target = Target {
        method,
        kind,
        name,
        upstream: &upstream,
        annotations: a,
    };
    let principal = case.who.as_ref().map(Who::principal);
    let decision = policy.decide(principal.as_ref(), &target);
    let matched = policy.matching_rules(principal.as_ref(), &target);
    let mut out = format!(
        "decision: {} (rule {})\n",
        decision.effect.as_str(),
        decision.rule_name()
    );
    out.push_str(&format!(
        "target:   {kind:?} {name} ({method}) on upstream {upstream}, route {}\n",
        route.path
    ));
    if kind == portcullis_policy::Kind::Tool {
        out.push_str(&format!(
            "annotations: readOnlyHint={} destructiveHint={} idempotentHint={} openWorldHint={}\n",
            a.read_only, a.destructive, a.idempotent, a.open_world
        ));
    }
    out.push_str(&format!(
        "caller:   {}\n",
        principal
            .as_ref()
            .map_or("anonymous".to_owned(), |p| format!(
                "{} (issuer {:?}, groups {:?}, scopes {:?})",
                p.subject, p.issuer, p.groups, p.scopes
            ))
    ));
    if matched.is_empty() {
        out.push_str(&format!(
            "no rule matched: the policy's default ({})\n",
            policy.default_effect().as_str()
        ));
    } else {
        out.push_str("matching rules (file order):\n");
        for (rule, effect) in matched {
            out.push_str(&format!("  {:<5}  {rule}\n", effect.as_str()));
        }
    }
    Ok(out)
}

/// `policies/x.yaml` -> `policies/x.tests.yaml`.
fn tests_file(policy: &Path) -> PathBuf {
    let stem = policy
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    policy.with_file_name(format!("{stem}.tests.yaml"))
}

/// The policy files named by `args`: files as given, directories as the `*.yaml` and
/// `*.yml` files directly in them (sorted); table files (`*.tests.yaml`) are skipped.
fn policy_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let is_table = |p: &Path| p.to_string_lossy().ends_with(".tests.yaml");
    let mut files = Vec::new();
    for arg in args {
        if !arg.is_dir() {
            if !is_table(arg) {
                files.push(arg.clone());
            }
            continue;
        }
        let entries =
            std::fs::read_dir(arg).map_err(|e| format!("cannot read {}: {e}", arg.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !is_table(p))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        if found.is_empty() {
            return Err(format!("{} holds no policy file (*.yaml)", arg.display()));
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn test(args: &[PathBuf]) -> ExitCode {
    let files = match policy_files(args) {
        Ok(f) => f,
        Err(e) => {
            println!("FAIL {e}");
            return ExitCode::from(1);
        }
    };
    let mut failed = 0usize;
    let mut passed = 0usize;
    for file in &files {
        let policy = match portcullis_config::load_policy(file) {
            Ok(p) => p,
            Err(e) => {
                println!("FAIL {}: {e}", file.display());
                failed += 1;
                continue;
            }
        };
        let tf = tests_file(file);
        let cases = match std::fs::read_to_string(&tf)
            .map_err(|e| format!("cannot read {}: {e}", tf.display()))
            .and_then(|t| table::parse(&t).map_err(|e| format!("{}: {e}", tf.display())))
        {
            Ok(c) => c,
            Err(e) => {
                println!("FAIL {}: {e}", file.display());
                failed += 1;
                continue;
            }
        };
        if cases.is_empty() {
            println!("FAIL {}: {} holds no cases", file.display(), tf.display());
            failed += 1;
            continue;
        }
        let mut file_failed = 0usize;
        for case in &cases {
            let outcome = case.run(&policy);
            match outcome.failure {
                None => passed += 1,
                Some(why) => {
                    file_failed += 1;
                    println!("FAIL {}: {}: {why}", tf.display(), outcome.name);
                }
            }
        }
        failed += file_failed;
        if file_failed == 0 {
            println!("ok   {} ({} cases)", file.display(), cases.len());
        }
    }
    println!("policy tests: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
