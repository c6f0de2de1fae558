//! tessera command line: `serve` (the OpenAI-compatible HTTP server), `generate`, `chat`,
//! `audit export`, `feedback export`, `perplexity` and `bench`. The flags are declared in
//! `tessera::cli::args`; the work lives in `tessera::server`, `tessera::audit` and
//! `tessera::cli`.

use clap::Parser;
use tessera::cli::args::*;

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve { engine, server } => {
            tessera::server::logging::init(server.log_format);
            let (path, cfg) = engine.config();
            cpu_kernels().and_then(|()| {
                server
                    .config()
                    .map_err(Into::into)
                    .and_then(|server_cfg| tessera::server::serve(path, cfg, server_cfg))
            })
        }
        Command::Generate {
            engine,
            sampling,
            prompt,
            raw,
        } => {
            let (path, cfg) = engine.config();
            cpu_kernels()
                .and_then(|()| tessera::cli::start_engine(&path, &cfg))
                .and_then(|e| tessera::cli::generate(&e, prompt, *raw, sampling.params()))
        }
        Command::Chat {
            engine,
            sampling,
            system,
        } => {
            let (path, cfg) = engine.config();
            cpu_kernels()
                .and_then(|()| tessera::cli::start_engine(&path, &cfg))
                .and_then(|e| tessera::cli::chat(&e, system.as_deref(), sampling.params()))
        }
        Command::Feedback {
            command:
                FeedbackCommand::Export {
                    since,
                    until,
                    out_dir,
                    data_dir,
                    database_url,
                },
        } => {
            let store =
                tessera::store::StoreConfig::from_flags(data_dir.clone(), database_url.clone());
            tessera::cli::export_feedback(&store, since, until.as_deref(), out_dir)
        }
        Command::Audit {
            command: AuditCommand::Export(a),
        } => tessera::audit::export::ExportRange::parse(&a.since, a.until.as_deref())
            .and_then(|range| {
                tessera::audit::export::run(
                    &a.store.config(),
                    &range,
                    &a.format,
                    a.output.as_deref(),
                )
            })
            .map(|n| eprintln!("exported {n} exchanges"))
            .map_err(Into::into),
        Command::Perplexity { engine, args } => {
            let (path, cfg) = engine.config();
            tessera::cli::start_engine(&path, &cfg)
                .and_then(|e| tessera::cli::perplexity::run(&e, args))
        }
        Command::Bench {
            engine,
            concurrency,
            prompt_len,
            max_tokens,
        } => {
            let (path, cfg) = engine.config();
            cpu_kernels()
                .and_then(|()| tessera::cli::start_engine(&path, &cfg))
                .and_then(|e| {
                    for &c in concurrency {
                        let r = tessera::cli::bench(&e, c, *prompt_len, *max_tokens)?;
                        println!(
                        "concurrency {c:>3}: {:>6} tokens in {:>6.2}s = {:>7.1} output tok/s | \
                         ttft {:>7.1} ms | per-stream decode {:>6.1} tok/s",
                        r.output_tokens,
                        r.seconds,
                        r.output_tokens as f64 / r.seconds,
                        r.ttft_ms,
                        r.decode_tok_s
                    );
                    }
                    Ok(())
                })
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Decides which instruction-set level the CPU kernels use (what the CPU has, capped by
/// `TESSERA_CPU_FEATURES`) before a model is loaded, so a bad value stops the process with
/// its message; logs the choice (`serve`'s startup log).
fn cpu_kernels() -> Result<(), Box<dyn std::error::Error>> {
    let cpu = tessera::ops::cpu_features::init()?;
    tracing::info!(
        level = %cpu.level,
        vnni = cpu.vnni,
        host = %cpu.host,
        "CPU kernels: {} (TESSERA_CPU_FEATURES caps it; this CPU has {})",
        cpu.level,
        cpu.host
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::time::Duration;
    use tessera::model::quantize::Quantization;

    #[test]
    fn every_serve_flag_has_its_tessera_env_variable() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve command");
        let mut checked = 0;
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let expected = format!("TESSERA_{}", id.to_uppercase());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "--{id}"
            );
            checked += 1;
        }
        // Guards against a walk that checks nothing; the exact count changes with every flag.
        assert!(checked >= 38, "only {checked} serve flags were checked");
    }

    #[test]
    fn quantization_takes_q8_0_and_q4_0_and_names_a_wrong_value() {
        let parse = |value: &str| {
            Cli::try_parse_from(["tessera", "generate", "-p", "x", "--quantization", value])
        };
        for (value, want) in [("q8_0", Quantization::Q8_0), ("q4_0", Quantization::Q4_0)] {
            let Ok(Cli {
                command: Command::Generate { engine, .. },
            }) = parse(value)
            else {
                panic!("--quantization {value} parses")
            };
            assert_eq!(engine.config().1.quantization, Some(want));
        }
        let err = parse("int4").err().expect("int4 is refused").to_string();
        assert!(
            err.contains("--quantization must be one of: q8_0, q4_0. Given: `int4`"),
            "{err}"
        );
    }

    #[test]
    fn kv_cache_dtype_takes_auto_and_q8_0_and_names_a_wrong_value() {
        use tessera::model::kv_storage::KvCacheDtype;
        let parse = |value: &str| {
            Cli::try_parse_from(["tessera", "generate", "-p", "x", "--kv-cache-dtype", value])
        };
        for (value, want) in [("auto", KvCacheDtype::Auto), ("q8_0", KvCacheDtype::Q8_0)] {
            let Ok(Cli {
                command: Command::Generate { engine, .. },
            }) = parse(value)
            else {
                panic!("--kv-cache-dtype {value} parses")
            };
            assert_eq!(engine.config().1.kv_cache_dtype, want);
        }
        let err = parse("fp8").err().expect("fp8 is refused").to_string();
        assert!(
            err.contains("--kv-cache-dtype must be one of: auto, q8_0. Given: `fp8`"),
            "{err}"
        );
    }

    #[test]
    fn device_and_gpu_memory_share_parse_and_bad_values_are_named() {
        use tessera::backend::Device;
        let parse = |args: &[&str]| {
            let mut argv = vec!["tessera", "generate", "-p", "x"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Generate { engine, .. } => engine.config().1,
                _ => panic!("the generate command"),
            })
        };
        let cfg = parse(&["--device", "cuda:1", "--gpu-memory-utilization", "0.75"]).unwrap();
        assert_eq!(
            (cfg.device, cfg.gpu_memory_utilization),
            (Device::Cuda(1), 0.75)
        );
        assert_eq!(parse(&[]).unwrap().device, Device::Cpu);
        let err = parse(&["--device", "tpu"]).unwrap_err().to_string();
        assert!(err.contains("expected `cpu`, `cuda` or `cuda:N`"), "{err}");
        for share in ["0", "1.5", "-0.1", "most"] {
            let flag = format!("--gpu-memory-utilization={share}");
            let err = parse(&[flag.as_str()]).unwrap_err().to_string();
            assert!(err.contains("is not a share in (0, 1]"), "{share}: {err}");
        }
    }

    #[test]
    fn every_serve_flag_has_one_line_of_help() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve command");
        let bare: Vec<String> = serve
            .get_arguments()
            .filter(|arg| {
                arg.get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
            })
            .map(|arg| format!("--{}", arg.get_id().as_str().replace('_', "-")))
            .collect();
        assert!(bare.is_empty(), "flags without help text: {bare:?}");
    }

    fn audit_config(flags: &[&str]) -> Result<tessera::audit::AuditConfig, String> {
        let cli = Cli::try_parse_from([&["tessera", "serve"][..], flags].concat()).expect("parses");
        let Command::Serve { server, .. } = cli.command else {
            panic!("not serve")
        };
        server.audit()
    }

    #[test]
    fn a_retention_below_180_days_needs_allow_short_retention() {
        let default = audit_config(&[]).expect("the defaults are valid");
        assert_eq!(default.retention_days, 180);
        assert_eq!(default.max_lag, Duration::from_secs(30));
        let refused = audit_config(&["--audit-retention-days", "179"]).expect_err("too short");
        assert!(
            refused.contains("--audit-retention-days must be >= 180")
                && refused.contains("Given: 179"),
            "{refused}"
        );
        let short = ["--audit-retention-days", "7", "--allow-short-retention"];
        assert_eq!(audit_config(&short).expect("allowed").retention_days, 7);
        let zero = ["--audit-retention-days", "0", "--allow-short-retention"];
        assert!(audit_config(&zero).is_err(), "0 days is never accepted");
        assert_eq!(
            audit_config(&["--audit-retention-days", "365"]).map(|c| c.retention_days),
            Ok(365)
        );
        for (flag, value) in [
            ("--audit-max-lag", "0"),
            ("--audit-max-lag", "-1"),
            ("--review-sample-rate", "1.5"),
        ] {
            let refused = audit_config(&[&format!("{flag}={value}")]).expect_err(flag);
            assert!(
                refused.contains(flag) && refused.contains(value),
                "{refused}"
            );
        }
    }

    #[test]
    fn serve_reads_its_config_from_the_environment() {
        // Only this test sets these variables in this process.
        std::env::set_var("TESSERA_PORT", "9123");
        std::env::set_var("TESSERA_API_KEY", "sk-a,sk-b");
        std::env::set_var("TESSERA_SHUTDOWN_TIMEOUT", "2.5");
        std::env::set_var("TESSERA_MAX_REQUEST_BYTES", "1KiB");
        std::env::set_var("TESSERA_DATABASE_URL", "postgres://u@db/tessera");
        let cli =
            Cli::try_parse_from(["tessera", "serve", "--served-model-name", "m"]).expect("parses");
        let Command::Serve { server, .. } = cli.command else {
            panic!("not serve")
        };
        let cfg = server.config().expect("valid");
        assert_eq!(cfg.port, 9123);
        assert_eq!(cfg.api_keys, vec!["sk-a".to_string(), "sk-b".to_string()]);
        assert_eq!(cfg.shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.max_request_bytes, 1024);
        assert_eq!(cfg.served_model_names, vec!["m".to_string()]);
        assert_eq!(cfg.host, "127.0.0.1");
        assert_eq!(
            cfg.dialog.store,
            tessera::store::StoreConfig::Postgres {
                url: "postgres://u@db/tessera".into()
            }
        );
        assert_eq!(cfg.dialog.window, tessera::dialog::WindowRule::default());
    }
}
