//! The vCPU run loop under outside control, on this host's /dev/kvm with a hand-made
//! real-mode guest (no Linux needed, so this runs on kvm_pvm hosts too).

use std::path::Path;
use std::sync::Arc;
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
    let mut vcpu = vm.create_vcpu(0, Arc::from([])).unwrap();
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
    let mut vcpu = vm.create_vcpu(0, Arc::from([])).unwrap();
    vcpu.setup_real_mode(CODE as u16).unwrap();
    let control = VcpuControl::new();
    control.request_stop();
    assert_eq!(
        vcpu.run_controlled(&IoBuses::default(), &control).unwrap(),
        VcpuEvent::Stopped
    );
}

/// A real-mode guest that counts in the word at 0x2000 forever: `inc word [0x2000]`,
/// `jmp` back.
const COUNTER_PROGRAM: [u8; 6] = [0xff, 0x06, 0x00, 0x20, 0xeb, 0xfa];
const COUNTER: u64 = 0x2000;

fn counter(memory: &GuestMemoryMmap) -> u16 {
    memory.read_obj(GuestAddress(COUNTER)).unwrap()
}

/// Runs `vcpu` on a thread until `control` stops it.
fn spawn(
    mut vcpu: vmm::vstate::vcpu::Vcpu,
    control: &Arc<VcpuControl>,
) -> std::thread::JoinHandle<()> {
    let control = control.clone();
    std::thread::spawn(move || {
        vcpu.run_controlled(&IoBuses::default(), &control).unwrap();
    })
}

fn pause(control: &VcpuControl, handle: &std::thread::JoinHandle<()>) {
    control.request_pause();
    handle.kill(kick_signal()).unwrap();
    assert!(control.wait_paused(Duration::from_secs(10)));
}

fn stop(control: &VcpuControl, handle: std::thread::JoinHandle<()>) {
    control.request_stop();
    handle.kill(kick_signal()).unwrap();
    handle.join().unwrap();
}

#[test]
fn a_paused_vcpu_saves_its_state_and_a_new_vm_goes_on_from_it() {
    let kvm = Kvm::open(Path::new("/dev/kvm")).expect("vmm/tests need /dev/kvm");
    install_kick_handler().unwrap();
    let msrs: Arc<[u32]> =
        vmm::arch::x86_64::msr::msrs_to_save(&kvm.msr_index_list().unwrap()).into();
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    memory
        .write_slice(&COUNTER_PROGRAM, GuestAddress(CODE))
        .unwrap();
    let vm = Vm::new(&kvm).unwrap();
    vm.register_memory(&memory).unwrap();
    vm.setup_platform().unwrap();
    let vcpu = vm.create_vcpu(0, msrs.clone()).unwrap();
    vcpu.setup_real_mode(CODE as u16).unwrap();
    let control = VcpuControl::new();
    let handle = spawn(vcpu, &control);
    wait_for("the guest counts", || counter(&memory) > 100);

    // The snapshot: pause, then the VM's and the vCPU's state, then memory.
    pause(&control, &handle);
    let vm_state = vm.save_state().unwrap();
    let vcpu_state = control.save(Duration::from_secs(10)).unwrap().unwrap();
    assert!(control.is_paused(), "saving leaves the vCPU paused");
    let saved_count = counter(&memory);
    let copy = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mut bytes = vec![0u8; 0x10000];
    memory.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    copy.write_slice(&bytes, GuestAddress(0)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(counter(&memory), saved_count, "a paused guest does not run");
    stop(&control, handle);
    assert!(
        (CODE..CODE + 6).contains(&vcpu_state.regs.rip),
        "{:#x}",
        vcpu_state.regs.rip
    );

    // The restore: a new VM, the copy of memory, the saved state; it counts on.
    let vm2 = Vm::new(&kvm).unwrap();
    vm2.register_memory(&copy).unwrap();
    vm2.setup_platform().unwrap();
    vm2.restore_state(&vm_state).unwrap();
    let vcpu2 = vm2.create_vcpu(0, msrs).unwrap();
    vcpu2.restore_state(&vcpu_state).unwrap();
    assert_eq!(counter(&copy), saved_count);
    let control2 = VcpuControl::new();
    let handle2 = spawn(vcpu2, &control2);
    wait_for("the restored guest counts on", || {
        counter(&copy).wrapping_sub(saved_count) > 100
    });
    stop(&control2, handle2);
    assert_eq!(
        counter(&memory),
        saved_count,
        "the first VM's memory is its own"
    );

    // The state goes through its file form unchanged.
    let json = serde_json::to_vec(&vcpu_state).unwrap();
    let back: vmm::vstate::vcpu::VcpuState = serde_json::from_slice(&json).unwrap();
    assert_eq!(back.regs.rip, vcpu_state.regs.rip);
    assert_eq!(back.msrs.len(), vcpu_state.msrs.len());
    assert_eq!(serde_json::to_vec(&back).unwrap(), json);
}
