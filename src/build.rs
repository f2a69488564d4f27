//! Build script: compiles the Istio/Envoy `.proto` files in `src/proto/` (xDS, Workload and
//! Authorization APIs, the CA service) into prost types and tonic stubs. protox parses them
//! in Rust, so the build needs no `protoc`.

fn main() {
    let files = [
        "src/proto/discovery.proto",
        "src/proto/workload.proto",
        "src/proto/authorization.proto",
        "src/proto/citadel.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = match protox::compile(files, ["src/proto"]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("src/proto: {e:?}");
            std::process::exit(1);
        }
    };
    let r = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds);
    if let Err(e) = r {
        eprintln!("generating code from src/proto: {e}");
        std::process::exit(1);
    }
}
