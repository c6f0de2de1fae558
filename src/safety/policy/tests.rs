use super::*;

fn parse(toml: &str) -> Result<Policy, PolicyError> {
    Policy::from_bytes(Path::new("/p/policy.toml"), toml.as_bytes())
}

fn error(toml: &str) -> String {
    parse(toml).expect_err("refused").to_string()
}

#[test]
fn the_example_policy_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/moderation/example.toml");
    let policy = Policy::load(&path).expect("example.toml is valid");
    assert_eq!(policy.input_rules.max_input_chars, Some(512));
    assert!(policy.input_rules.reject_control_chars);
    assert_eq!(
        policy.input_rules.blocked_message,
        "输入包含敏感内容,请重新表述"
    );
    let categories: Vec<&str> = policy.rules.iter().map(|r| r.category.as_str()).collect();
    assert_eq!(categories, ["violence", "fraud", "pii"]);
    assert_eq!(policy.rules[2].action, Action::Mask);
    assert!(policy.input.is_some() && policy.output.is_some());
    assert_eq!(policy.version.len(), 16);
}

#[test]
fn defaults_are_secure_and_stages_default_to_both() {
    let p = parse("[[rule]]\ncategory = \"x\"\naction = \"flag\"\nterms = [\"a\"]").expect("valid");
    assert_eq!(p.input_rules.max_input_chars, None);
    assert!(p.input_rules.reject_control_chars);
    assert_eq!(p.input_rules.blocked_message, DEFAULT_BLOCKED_MESSAGE);
    assert!(p.rules[0].input && p.rules[0].output);
    let empty = parse("").expect("an empty policy is valid");
    assert!(empty.input.is_none() && empty.output.is_none());
}

#[test]
fn errors_name_the_rule_and_the_field() {
    let rule = |body: &str| {
        format!("[[rule]]\ncategory = \"ok\"\naction = \"flag\"\nterms = [\"a\"]\n[[rule]]\n{body}")
    };
    let e = error(&rule(
        "category = \"v\"\naction = \"bloc\"\nterms = [\"a\"]",
    ));
    assert!(
        e.contains(
            "rule 2 (category \"v\"): `action` must be one of block, mask, flag. Given: \"bloc\""
        ),
        "{e}"
    );
    let e = error(&rule("action = \"block\"\nterms = [\"a\"]"));
    assert!(
        e.contains("rule 2") && e.contains("`category` is required"),
        "{e}"
    );
    let e = error(&rule(
        "category = \"v\"\naction = \"block\"\nstages = [\"inputs\"]\nterms = [\"a\"]",
    ));
    assert!(e.contains("`stages`") && e.contains("\"inputs\""), "{e}");
    let e = error(&rule(
        "category = \"v\"\naction = \"block\"\nstages = []\nterms = [\"a\"]",
    ));
    assert!(e.contains("`stages` must name at least one stage"), "{e}");
    let e = error(&rule("category = \"v\"\naction = \"block\""));
    assert!(e.contains("needs at least one of `terms`"), "{e}");
    let e = error(&rule(
        "category = \"v\"\naction = \"block\"\nterms = [\"ok\", \"...\"]",
    ));
    assert!(
        e.contains("`terms` terms[1]: \"...\" has 0 letters or digits"),
        "{e}"
    );
    let e = error(&rule(
        "category = \"v\"\naction = \"mask\"\npatterns = ['(']",
    ));
    assert!(
        e.contains("rule 2") && e.contains("`patterns` [0] \"(\""),
        "{e}"
    );
    let e = error(&rule(
        "category = \"v\"\naction = \"mask\"\npatterns = ['x*']",
    ));
    assert!(e.contains("empty text"), "{e}");
    let e = error("[input]\nmax_input_chars = 0");
    assert!(
        e.contains("[input] `max_input_chars` must be >= 1. Given: 0"),
        "{e}"
    );
    let e = error("[input]\nblocked_message = \" \"");
    assert!(e.contains("`blocked_message` must not be empty"), "{e}");
}

#[test]
fn unknown_keys_and_bad_syntax_are_refused_with_their_place() {
    let e = error(
        "[[rule]]\ncategory = \"v\"\naction = \"block\"\nstage = [\"input\"]\nterms = [\"a\"]",
    );
    assert!(
        e.contains("unknown field `stage`") && e.contains("line 4"),
        "{e}"
    );
    let e = error("[input]\nmax_input_chars = \"512\"");
    assert!(
        e.contains("/p/policy.toml") && e.contains("max_input_chars"),
        "{e}"
    );
    let e = error("[[rule]\n");
    assert!(e.contains("not a valid policy file"), "{e}");
}

#[test]
fn output_patterns_must_be_bounded_input_ones_need_not() {
    let rule = |stages: &str| {
        format!("[[rule]]\ncategory = \"pii\"\naction = \"mask\"\nstages = {stages}\npatterns = ['\\d+']")
    };
    parse(&rule("[\"input\"]")).expect("unbounded is fine on input");
    let e = error(&rule("[\"output\"]"));
    assert!(
        e.contains("unboundedly many") && e.contains("\\d{1,20}"),
        "{e}"
    );
}

#[test]
fn terms_files_are_relative_to_the_policy_and_fingerprinted() {
    let dir = std::env::temp_dir().join(format!("tessera-policy-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("lists")).expect("dir");
    std::fs::write(
        dir.join("lists/v.txt"),
        "# comment\n\n炸弹\n  make a bomb  \n",
    )
    .expect("write");
    let policy_text =
        "[[rule]]\ncategory = \"v\"\naction = \"block\"\nterms_file = \"lists/v.txt\"";
    std::fs::write(dir.join("p.toml"), policy_text).expect("write");
    let p = Policy::load(&dir.join("p.toml")).expect("valid");
    assert_eq!(p.rules[0].num_terms, 2);
    std::fs::write(dir.join("lists/v.txt"), "炸弹\n").expect("write");
    let p2 = Policy::load(&dir.join("p.toml")).expect("valid");
    assert_ne!(
        p.version, p2.version,
        "a terms file change is a new version"
    );
    std::fs::write(dir.join("lists/v.txt"), "ok\n!!!\n").expect("write");
    let e = Policy::load(&dir.join("p.toml"))
        .expect_err("bad term")
        .to_string();
    assert!(e.contains("v.txt` line 2"), "{e}");
    std::fs::remove_file(dir.join("lists/v.txt")).expect("rm");
    let e = Policy::load(&dir.join("p.toml"))
        .expect_err("missing")
        .to_string();
    assert!(
        e.contains("`terms_file` cannot read") && e.contains("lists/v.txt"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
