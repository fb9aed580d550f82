"""From a bundle to a running camera service on a device: the deploy folder (folder.py), what it installs
(pins.py, wheel.py, install.sh) and the copy over ssh (remote.py). Sits above runtime/ and devices/."""

from .folder import DeployConfig, DeployError, DeployFolder, deploy_folder
from .remote import Host, HostResult, RemoteConfig, deploy_hosts

__all__ = ["DeployConfig", "DeployError", "DeployFolder", "Host", "HostResult", "RemoteConfig", "deploy_folder",
           "deploy_hosts"]
