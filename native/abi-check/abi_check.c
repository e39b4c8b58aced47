/*
 * ABI check for the managed VFIO bindings (src/Vfio.Interop).
 *
 * Compiled by tests/Vfio.Tests/Core/AbiCheckTests.cs against the uAPI headers it finds (the 6.12
 * bookworm-backports linux-libc-dev unpacked by fetch-uapi-headers.sh, else the system's), then run.
 * Prints one fact per line:
 *   NAME=value                     a constant or ioctl number
 *   sizeof(struct)=N               a struct size
 *   offsetof(struct.field)=N       a field offset
 *   fieldsize(struct.field)=N      a field size
 *   signed(struct.field)=0|1       whether an integer field is signed
 *   missing:NAME                   the header has no such constant/struct (older kernel uAPI)
 *   header:KEY=value               what was compiled against
 * The test maps C names to the managed ones (vfio_region_info.cap_offset -> VfioRegionInfo.CapOffset).
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <linux/version.h>
#include <linux/vfio.h>
#if __has_include(<linux/iommufd.h>)
#include <linux/iommufd.h>
#define HAVE_IOMMUFD 1
#endif

#define C(name) printf("%s=%lld\n", #name, (long long)(name))
#define M(name) printf("missing:%s\n", #name)
#define F(type, field)                                                                          \
    do {                                                                                        \
        printf("offsetof(%s.%s)=%zu\n", #type, #field, offsetof(struct type, field));           \
        printf("fieldsize(%s.%s)=%zu\n", #type, #field, sizeof(((struct type *)0)->field));     \
        printf("signed(%s.%s)=%d\n", #type, #field,                                             \
               (__typeof__(((struct type *)0)->field))-1 > (__typeof__(((struct type *)0)->field))0 ? 0 : 1); \
    } while (0)
#define S(type) printf("sizeof(%s)=%zu\n", #type, sizeof(struct type))

int main(void)
{
    printf("header:LINUX_VERSION_CODE=%d\n", LINUX_VERSION_CODE);

    /* libc */
    C(O_WRONLY); C(O_RDWR); C(O_CLOEXEC);
    C(EPERM); C(ENOENT); C(EINTR); C(EIO); C(E2BIG); C(EBADF); C(EAGAIN); C(ENOMEM); C(EACCES); C(EFAULT);
    C(EBUSY); C(EEXIST); C(ENODEV); C(EINVAL); C(ENOTTY); C(ESPIPE); C(EPIPE); C(ENOMSG); C(EOPNOTSUPP);
    C(ENOSPC); C(EADDRINUSE); C(EADDRNOTAVAIL); C(ENETUNREACH); C(ECONNABORTED); C(ECONNRESET); C(ENOTCONN);
    C(ETIMEDOUT); C(ECONNREFUSED); C(EHOSTUNREACH);
    C(AF_UNIX); C(SOCK_STREAM); C(SOCK_CLOEXEC);
    C(PRIO_PROCESS);

    /* container and group */
    C(VFIO_API_VERSION);
    C(VFIO_TYPE1_IOMMU); C(VFIO_TYPE1v2_IOMMU);
    C(VFIO_GET_API_VERSION); C(VFIO_CHECK_EXTENSION); C(VFIO_SET_IOMMU);
    C(VFIO_GROUP_GET_STATUS); C(VFIO_GROUP_SET_CONTAINER); C(VFIO_GROUP_UNSET_CONTAINER);
    C(VFIO_GROUP_GET_DEVICE_FD);
    C(VFIO_GROUP_FLAGS_VIABLE); C(VFIO_GROUP_FLAGS_CONTAINER_SET);
    S(vfio_group_status); F(vfio_group_status, argsz); F(vfio_group_status, flags);

    /* device info, regions, reset */
    C(VFIO_DEVICE_GET_INFO); C(VFIO_DEVICE_GET_REGION_INFO); C(VFIO_DEVICE_RESET);
    C(VFIO_DEVICE_FLAGS_RESET); C(VFIO_DEVICE_FLAGS_PCI); C(VFIO_DEVICE_FLAGS_PLATFORM);
    C(VFIO_DEVICE_FLAGS_AMBA); C(VFIO_DEVICE_FLAGS_CCW); C(VFIO_DEVICE_FLAGS_AP);
    C(VFIO_DEVICE_FLAGS_FSL_MC); C(VFIO_DEVICE_FLAGS_CAPS);
#ifdef VFIO_DEVICE_FLAGS_CDX
    C(VFIO_DEVICE_FLAGS_CDX);
#else
    M(VFIO_DEVICE_FLAGS_CDX);
#endif
    S(vfio_device_info);
    F(vfio_device_info, argsz); F(vfio_device_info, flags); F(vfio_device_info, num_regions);
    F(vfio_device_info, num_irqs); F(vfio_device_info, cap_offset); F(vfio_device_info, pad);
    C(VFIO_REGION_INFO_FLAG_READ); C(VFIO_REGION_INFO_FLAG_WRITE); C(VFIO_REGION_INFO_FLAG_MMAP);
    C(VFIO_REGION_INFO_FLAG_CAPS);
    S(vfio_region_info);
    F(vfio_region_info, argsz); F(vfio_region_info, flags); F(vfio_region_info, index);
    F(vfio_region_info, cap_offset); F(vfio_region_info, size); F(vfio_region_info, offset);
    C(VFIO_PCI_BAR0_REGION_INDEX); C(VFIO_PCI_BAR1_REGION_INDEX); C(VFIO_PCI_BAR2_REGION_INDEX);
    C(VFIO_PCI_BAR3_REGION_INDEX); C(VFIO_PCI_BAR4_REGION_INDEX); C(VFIO_PCI_BAR5_REGION_INDEX);
    C(VFIO_PCI_ROM_REGION_INDEX); C(VFIO_PCI_CONFIG_REGION_INDEX); C(VFIO_PCI_VGA_REGION_INDEX);
    C(VFIO_PCI_NUM_REGIONS);

    /* interrupts (information only) and the type1 IOMMU's DMA mappings */
    C(VFIO_DEVICE_GET_IRQ_INFO);
    C(VFIO_IRQ_INFO_EVENTFD); C(VFIO_IRQ_INFO_MASKABLE); C(VFIO_IRQ_INFO_AUTOMASKED); C(VFIO_IRQ_INFO_NORESIZE);
    C(VFIO_PCI_INTX_IRQ_INDEX); C(VFIO_PCI_MSI_IRQ_INDEX); C(VFIO_PCI_MSIX_IRQ_INDEX); C(VFIO_PCI_ERR_IRQ_INDEX);
    C(VFIO_PCI_REQ_IRQ_INDEX); C(VFIO_PCI_NUM_IRQS);
    S(vfio_irq_info); F(vfio_irq_info, argsz); F(vfio_irq_info, flags); F(vfio_irq_info, index); F(vfio_irq_info, count);
    C(VFIO_IOMMU_MAP_DMA); C(VFIO_IOMMU_UNMAP_DMA); C(VFIO_DMA_MAP_FLAG_READ); C(VFIO_DMA_MAP_FLAG_WRITE);
    S(vfio_iommu_type1_dma_map);
    F(vfio_iommu_type1_dma_map, argsz); F(vfio_iommu_type1_dma_map, flags); F(vfio_iommu_type1_dma_map, vaddr);
    F(vfio_iommu_type1_dma_map, iova); F(vfio_iommu_type1_dma_map, size);
    /* data[] is a flexible array (a dirty bitmap when asked for): not part of the fixed layout */
    S(vfio_iommu_type1_dma_unmap);
    F(vfio_iommu_type1_dma_unmap, argsz); F(vfio_iommu_type1_dma_unmap, flags); F(vfio_iommu_type1_dma_unmap, iova);
    F(vfio_iommu_type1_dma_unmap, size);

    /* VFIO_DEVICE_FEATURE and migration */
    C(VFIO_DEVICE_FEATURE);
    C(VFIO_DEVICE_FEATURE_MASK); C(VFIO_DEVICE_FEATURE_GET); C(VFIO_DEVICE_FEATURE_SET);
    C(VFIO_DEVICE_FEATURE_PROBE);
    S(vfio_device_feature); F(vfio_device_feature, argsz); F(vfio_device_feature, flags);
    C(VFIO_DEVICE_FEATURE_MIGRATION); C(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
    C(VFIO_MIGRATION_STOP_COPY); C(VFIO_MIGRATION_P2P);
    S(vfio_device_feature_migration); F(vfio_device_feature_migration, flags);
    S(vfio_device_feature_mig_state);
    F(vfio_device_feature_mig_state, device_state); F(vfio_device_feature_mig_state, data_fd);
    C(VFIO_DEVICE_STATE_ERROR); C(VFIO_DEVICE_STATE_STOP); C(VFIO_DEVICE_STATE_RUNNING);
    C(VFIO_DEVICE_STATE_STOP_COPY); C(VFIO_DEVICE_STATE_RESUMING); C(VFIO_DEVICE_STATE_RUNNING_P2P);
#ifdef VFIO_MIGRATION_PRE_COPY
    C(VFIO_MIGRATION_PRE_COPY);
    C(VFIO_DEVICE_STATE_PRE_COPY); C(VFIO_DEVICE_STATE_PRE_COPY_P2P); C(VFIO_DEVICE_STATE_NR);
    C(VFIO_MIG_GET_PRECOPY_INFO);
    S(vfio_precopy_info);
    F(vfio_precopy_info, argsz); F(vfio_precopy_info, flags);
    F(vfio_precopy_info, initial_bytes); F(vfio_precopy_info, dirty_bytes);
#else
    M(VFIO_MIGRATION_PRE_COPY);
    M(VFIO_DEVICE_STATE_PRE_COPY); M(VFIO_DEVICE_STATE_PRE_COPY_P2P); M(VFIO_DEVICE_STATE_NR);
    M(VFIO_MIG_GET_PRECOPY_INFO);
    M(vfio_precopy_info);
#endif
#ifdef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
    C(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE);
    S(vfio_device_feature_mig_data_size); F(vfio_device_feature_mig_data_size, stop_copy_length);
#else
    M(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE);
    M(vfio_device_feature_mig_data_size);
#endif

    /* DMA logging (dirty tracking in the device) */
#ifdef VFIO_DEVICE_FEATURE_DMA_LOGGING_START
    C(VFIO_DEVICE_FEATURE_DMA_LOGGING_START); C(VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP);
    C(VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT);
    S(vfio_device_feature_dma_logging_control);
    F(vfio_device_feature_dma_logging_control, page_size);
    F(vfio_device_feature_dma_logging_control, num_ranges);
    F(vfio_device_feature_dma_logging_control, __reserved);
    F(vfio_device_feature_dma_logging_control, ranges);
    S(vfio_device_feature_dma_logging_range);
    F(vfio_device_feature_dma_logging_range, iova); F(vfio_device_feature_dma_logging_range, length);
    S(vfio_device_feature_dma_logging_report);
    F(vfio_device_feature_dma_logging_report, iova); F(vfio_device_feature_dma_logging_report, length);
    F(vfio_device_feature_dma_logging_report, page_size);
    F(vfio_device_feature_dma_logging_report, bitmap);
#else
    M(VFIO_DEVICE_FEATURE_DMA_LOGGING_START); M(VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP);
    M(VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT);
    M(vfio_device_feature_dma_logging_control); M(vfio_device_feature_dma_logging_range);
    M(vfio_device_feature_dma_logging_report);
#endif

    /* cdev path: /dev/vfio/devices/vfioN bound to an iommufd */
#ifdef VFIO_DEVICE_BIND_IOMMUFD
    C(VFIO_DEVICE_BIND_IOMMUFD); C(VFIO_DEVICE_ATTACH_IOMMUFD_PT); C(VFIO_DEVICE_DETACH_IOMMUFD_PT);
    S(vfio_device_bind_iommufd);
    F(vfio_device_bind_iommufd, argsz); F(vfio_device_bind_iommufd, flags);
    F(vfio_device_bind_iommufd, iommufd); F(vfio_device_bind_iommufd, out_devid);
    S(vfio_device_attach_iommufd_pt);
    F(vfio_device_attach_iommufd_pt, argsz); F(vfio_device_attach_iommufd_pt, flags);
    F(vfio_device_attach_iommufd_pt, pt_id);
    S(vfio_device_detach_iommufd_pt);
    F(vfio_device_detach_iommufd_pt, argsz); F(vfio_device_detach_iommufd_pt, flags);
#else
    M(VFIO_DEVICE_BIND_IOMMUFD); M(VFIO_DEVICE_ATTACH_IOMMUFD_PT); M(VFIO_DEVICE_DETACH_IOMMUFD_PT);
    M(vfio_device_bind_iommufd); M(vfio_device_attach_iommufd_pt); M(vfio_device_detach_iommufd_pt);
#endif
#ifdef HAVE_IOMMUFD
    C(IOMMUFD_CMD_BASE); C(IOMMUFD_CMD_DESTROY); C(IOMMUFD_CMD_IOAS_ALLOC);
    C(IOMMU_DESTROY); C(IOMMU_IOAS_ALLOC);
    S(iommu_destroy); F(iommu_destroy, size); F(iommu_destroy, id);
    S(iommu_ioas_alloc);
    F(iommu_ioas_alloc, size); F(iommu_ioas_alloc, flags); F(iommu_ioas_alloc, out_ioas_id);
#else
    M(IOMMUFD_CMD_BASE); M(IOMMUFD_CMD_DESTROY); M(IOMMUFD_CMD_IOAS_ALLOC);
    M(IOMMU_DESTROY); M(IOMMU_IOAS_ALLOC);
    M(iommu_destroy); M(iommu_ioas_alloc);
#endif
    return 0;
}
