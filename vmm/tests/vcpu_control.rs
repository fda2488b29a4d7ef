//! The vCPU run loop under outside control, on this host's /dev/kvm with a hand-made
//! real-mode guest (no Linux needed, so this runs on kvm_pvm hosts too).

use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::vstate::kvm::Kvm;
use vmm::vstate::vcpu::{IoBuses, VcpuControl, VcpuEvent, install_kick_handler, kick_signal};
use vmm::vstate::vm::Vm;
use vmm_sys_util::signal::Killable;

const CODE: u64 = 0x1000;

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_spinning_vcpu_pauses_resumes_and_stops_when_kicked() {
    let kvm = Kvm::open(Path::new("/dev/kvm"))
        .expect("vmm/tests need /dev/kvm (this test runs a tiny real-mode guest)");
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    memory
        .write_slice(&[0xeb, 0xfe], GuestAddress(CODE))
        .unwrap(); // jmp $
    let vm = Vm::new(&kvm).unwrap();
    vm.register_memory(&memory).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.setup_real_mode(CODE as u16).unwrap();
    install_kick_handler().unwrap();

    let control = VcpuControl::new();
    let thread_control = control.clone();
    let handle =
        std::thread::spawn(move || vcpu.run_controlled(&IoBuses::default(), &thread_control));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !handle.is_finished(),
        "the guest spins until told otherwise"
    );

    control.request_pause();
    handle.kill(kick_signal()).unwrap();
    wait_for("the vCPU is paused", || control.is_paused());

    control.resume();
    wait_for("the vCPU runs again", || !control.is_paused());
    std::thread::sleep(Duration::from_millis(20));
    assert!(!handle.is_finished());

    control.request_stop();
    handle.kill(kick_signal()).unwrap();
    wait_for("the vCPU thread ends", || handle.is_finished());
    assert_eq!(handle.join().unwrap().unwrap(), VcpuEvent::Stopped);
}

#[test]
fn a_stop_requested_before_the_first_run_is_honoured() {
    let kvm = Kvm::open(Path::new("/dev/kvm")).expect("vmm/tests need /dev/kvm");
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    memory
        .write_slice(&[0xeb, 0xfe], GuestAddress(CODE))
        .unwrap();
    let vm = Vm::new(&kvm).unwrap();
    vm.register_memory(&memory).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.setup_real_mode(CODE as u16).unwrap();
    let control = VcpuControl::new();
    control.request_stop();
    assert_eq!(
        vcpu.run_controlled(&IoBuses::default(), &control).unwrap(),
        VcpuEvent::Stopped
    );
}
