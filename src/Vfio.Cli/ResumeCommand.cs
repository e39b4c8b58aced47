using System.CommandLine;
using Vfio.Migration;

namespace Vfio.Cli;

/// <summary>
/// `resume`: puts source devices back to RUNNING after a migration whose outcome was unknown (the source committed and
/// then lost the destination), once the operator knows the destination did not take over.
/// </summary>
public static class ResumeCommand
{
    public static Command Create()
    {
        var devices = new Argument<string[]>("DEVICE")
        {
            Description = $"The source devices (PCI addresses or mdev UUIDs) that `send` named, after it exited with code {ExitCodes.OutcomeUnknown}",
            Arity = ArgumentArity.OneOrMore,
        };
        var command = new Command("resume", "Put source devices back to RUNNING after a migration whose outcome was unknown; "
            + "only once the destination is known not to run them")
        {
            devices,
        };
        command.SetAction(r =>
        {
            var output = r.InvocationConfiguration.Output;
            var error = r.InvocationConfiguration.Error;
            int failed = 0;
            var factory = new Vfio.Simulation.DeviceFactory();
            foreach (var spec in r.GetValue(devices)!)
            {
                try
                {
                    using var device = factory.Open(spec);
                    var from = device.GetState();
                    if (from == MigrationState.Running)
                    {
                        output.WriteLine($"{spec}: already RUNNING");
                        continue;
                    }
                    // From ERROR no transition works: a reset is what returns the device to RUNNING (its state is gone).
                    if (from == MigrationState.Error) device.Reset();
                    else device.SetState(MigrationState.Running)?.Dispose();
                    output.WriteLine($"{spec}: {from} -> RUNNING{(from == MigrationState.Error ? " (reset: the device was in ERROR)" : "")}");
                }
                catch (Exception e) when (e is MigrationException or VfioException or IOException or UnauthorizedAccessException
                    or ArgumentException)
                {
                    error.WriteLine($"vfio-mig: {spec}: {e.Message}");
                    failed++;
                }
            }
            // Each device is resumed on its own: one that fails (or cannot be found) leaves the others resumed.
            return failed == 0 ? ExitCodes.Ok : ExitCodes.Failed;
        });
        return command;
    }
}
