//! `STATUS`: whether the plugin can take an `ADD`.

use crate::agent_api::RequestBody;
use crate::spec::{CniError, CniVersion, code};

use super::Plugin;

impl Plugin<'_> {
    pub(super) fn status(&self) -> Result<(), CniError> {
        if self.conf.builtin_ipam() {
            let pool = self.pool(false).map_err(|e| {
                CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    format!("no address pool: {}", e.msg),
                )
            })?;
            if pool.ranges.is_empty() {
                return Err(CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    "no address pool configured",
                ));
            }
        } else {
            let delegate = self
                .delegate()
                .map_err(|e| CniError::new(code::PLUGIN_NOT_AVAILABLE, e.msg))?;
            let version = delegate.negotiate(self.version)?;
            if version >= CniVersion::V1_1_0 {
                delegate.call("STATUS", self.raw, version)?;
            }
        }
        if let Err(e) = self.agent_call(RequestBody::Status) {
            return Err(CniError::new(
                code::PLUGIN_NOT_AVAILABLE,
                format!("the gannet agent is not ready: {e}"),
            ));
        }
        Ok(())
    }
}
