//! gannet's benchmark harness: scenarios that compare gannet's socket-level service load balancing
//! with the limit (no load balancer) and with kube-proxy's nftables and iptables rules, on a routed
//! node built from network namespaces; gannet-cni's ADD/DEL latency next to the reference CNI
//! plugins; gannet-control's full and incremental syncs to gannetd agents next to kube-proxy's rule
//! loads; pod-to-pod traffic across nodes through gannet's overlay modes next to a Flannel-style
//! setup and the underlay; traffic from outside to node ports through gannet's NodePort program
//! next to kube-proxy's rules; pod start latency under gannetd's kubelet role next to the runtime
//! alone; and the reports they write.

pub mod agent;
pub mod chart;
pub mod clusterip;
pub mod cni;
pub mod control;
pub mod kubeproxy;
pub mod machine;
pub mod nodeport;
pub mod nodes;
pub mod overlay;
pub mod peer;
pub mod pods;
pub mod report;
pub mod results;
pub mod scenario;
pub mod services;
pub mod topology;
pub mod util;
